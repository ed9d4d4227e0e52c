package mesh

// HasBlock reports whether this node's ledger replica assigns the node
// named name a block.
func (m *Mesh) HasBlock(name string) bool {
	m.mu.Lock()
	led := m.led
	m.mu.Unlock()
	if led == nil {
		return false
	}
	st, _ := led.State()
	_, _, ok := st.BlockOfName(name)
	return ok
}
