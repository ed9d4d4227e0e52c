# Sourced by binaries.sh and netpol-e2e.sh (POSIX sh).
#
# unpack MODULE VERSION DIR NEWVERSION: copies MODULE@VERSION into DIR and
# replaces every local replace directive by a requirement of the published
# module at NEWVERSION.
unpack() {
	src=$(go mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -n "$src" ] || { echo "go mod download $1@$2 gave no directory" >&2; exit 1; }
	cp -r "$src" "$3"
	chmod -R u+w "$3"
	rm -rf "$3/go.work" "$3/go.work.sum" "$3/vendor"
	for module in $(sed -n 's/^[[:space:]]*\([^ ]*\) => \.\{1,2\}\/[^ ]*$/\1/p' "$3/go.mod"); do
		case "$module" in
		replace) continue ;; # a one-line replace: handled below
		esac
		(cd "$3" && go mod edit -dropreplace="$module" -require="$module@$4")
	done
	for module in $(sed -n 's/^replace \([^ ]*\) => \.\{1,2\}\/[^ ]*$/\1/p' "$3/go.mod"); do
		(cd "$3" && go mod edit -dropreplace="$module")
	done
}
