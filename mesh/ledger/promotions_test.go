package ledger

import "testing"

func TestPromotions(t *testing.T) {
	tests := []struct {
		name                       string
		voters, target, candidates int
		want                       int
	}{
		{"founder alone, one candidate: stay at one voter", 1, 3, 1, 0},
		{"founder and two candidates: both at once", 1, 3, 2, 2},
		{"founder and many candidates: two", 1, 3, 7, 2},
		{"two voters after a removal: one more", 2, 3, 1, 1},
		{"target reached", 3, 3, 4, 0},
		{"three of five, two candidates", 3, 5, 2, 2},
		{"three of five, one candidate: stay at three", 3, 5, 1, 0},
		{"four of five after a removal", 4, 5, 1, 1},
		{"one voter wanted", 1, 1, 3, 0},
		{"no candidates", 1, 3, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := promotions(tt.voters, tt.target, tt.candidates); got != tt.want {
				t.Errorf("promotions(%d, %d, %d) = %d, want %d", tt.voters, tt.target, tt.candidates, got, tt.want)
			}
			if got := promotions(tt.voters, tt.target, tt.candidates); got > 0 && (tt.voters+got)%2 == 0 {
				t.Errorf("promotions leave an even count: %d + %d", tt.voters, got)
			}
		})
	}
}
