package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// maxNodes bounds the nodes the decoder visits, so that a small file whose
// aliases expand exponentially (a "billion laughs") is an error instead of an
// out-of-memory kill.
const maxNodes = 1 << 20

// decoder turns the YAML node tree into a Config, collecting every problem it
// finds instead of stopping at the first.
type decoder struct {
	file   string
	errs   ErrorList
	pos    map[string]pos
	budget int
	// spent is set once the node budget is spent: what the decoder finds
	// missing after that is an artefact of stopping, not worth reporting.
	spent bool
}

func newDecoder(file string) *decoder {
	return &decoder{file: file, pos: make(map[string]pos), budget: maxNodes}
}

// errorAt records a problem with the item at path.
func (d *decoder) errorAt(path string, p pos, format string, args ...any) {
	if d.spent {
		return
	}
	d.errs = append(d.errs, &Error{
		File:    d.file,
		Path:    path,
		Line:    p.line,
		Column:  p.column,
		Message: fmt.Sprintf(format, args...),
	})
}

// errorf records a problem with the node n at path.
func (d *decoder) errorf(path string, n *yaml.Node, format string, args ...any) {
	d.errorAt(path, posOf(n), format, args...)
}

// posOf returns the position of n. The YAML parser sets one on every node it
// builds; line 1, column 1 stands in should one ever lack it.
func posOf(n *yaml.Node) pos {
	if n == nil || n.Line < 1 {
		return pos{1, 1}
	}
	return pos{n.Line, max(n.Column, 1)}
}

// yamlLine matches the syntax errors of the YAML parser, which give a line
// but no column.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError records an error of the YAML parser in data.
func (d *decoder) syntaxError(err error, data []byte) {
	msg := err.Error()
	p := pos{line: 1}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		if l, err := strconv.Atoi(m[1]); err == nil && l > 0 {
			p.line = l
		}
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	if lines := bytes.Split(data, []byte("\n")); p.line <= len(lines) && bytes.HasPrefix(bytes.TrimLeft(lines[p.line-1], " "), []byte("\t")) {
		msg += "; indent with spaces, not tabs"
	}
	d.errorAt("", p, "invalid YAML: %s", msg)
}

// parse parses data into its root node. It returns nil, with the errors
// recorded, when data is not one YAML document.
func (d *decoder) parse(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.errorAt("", pos{1, 1}, "the file holds no settings")
		} else {
			d.syntaxError(err, data)
		}
		return nil
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		d.errorf("", &next, "a second YAML document starts here; the file must hold one")
		return nil
	case !errors.Is(err, io.EOF):
		d.syntaxError(err, data)
		return nil
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || isNull(doc.Content[0]) {
		d.errorAt("", pos{1, 1}, "the file holds no settings")
		return nil
	}
	return doc.Content[0]
}

// node resolves aliases, records the position of the node at path and
// charges it to the node budget. It returns false when the budget is spent.
func (d *decoder) node(path string, n *yaml.Node) (*yaml.Node, bool) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	d.budget--
	if d.budget < 0 {
		if !d.spent {
			d.errorf(path, n, "the file expands to more than %d nodes through aliases", maxNodes)
			d.spent = true
		}
		return nil, false
	}
	d.pos[path] = posOf(n)
	return n, true
}

// missing reports that the key at path has no value. The error is at the
// key's null value if the file has one, else at parent.
func (d *decoder) missing(path string, parent *yaml.Node, msg string) {
	p, ok := d.pos[path]
	if !ok {
		p = posOf(parent)
	}
	d.errorAt(path, p, "%s", msg)
}

// describe names what n is, for "want X, got Y" messages: a map, a list,
// null, or its value as written.
func describe(n *yaml.Node) string {
	switch {
	case n.Kind == yaml.MappingNode:
		return "a map"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null":
		return "null"
	}
	return value(n)
}

// value returns a scalar as written: quoted if YAML reads it as a string,
// bare if it reads it as a number or a boolean.
func value(n *yaml.Node) string {
	if n.ShortTag() == "!!str" {
		return strconv.Quote(n.Value)
	}
	return n.Value
}

func (d *decoder) wrongType(path string, n *yaml.Node, want string) {
	d.errorf(path, n, "want %s, got %s", want, describe(n))
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// fields decodes the mapping n at path. It reports keys not in known and keys
// given twice, and calls fn with the resolved value of every known key that
// is not null; a null value counts as leaving the key out. It returns the
// keys given with a value, or nil if n is not a mapping.
func (d *decoder) fields(path string, n *yaml.Node, known []string, fn func(key, path string, v *yaml.Node)) map[string]bool {
	if n.Kind != yaml.MappingNode {
		d.wrongType(path, n, "a map")
		return nil
	}
	present := make(map[string]bool)
	seen := make(map[string]pos)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		for k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			d.errorf(path, k, "want a key, got %s", describe(k))
			continue
		}
		key := k.Value
		kpath := join(path, key)
		if k.ShortTag() == "!!merge" {
			d.errorf(kpath, k, "merge keys are not supported")
			continue
		}
		if first, ok := seen[key]; ok {
			d.errorf(kpath, k, "duplicate key; first given at line %d", first.line)
			continue
		}
		seen[key] = posOf(k)
		if !slices.Contains(known, key) {
			if s := suggest(key, known); s != "" {
				d.errorf(kpath, k, "unknown key; did you mean %s?", s)
			} else {
				d.errorf(kpath, k, "unknown key")
			}
			continue
		}
		v, ok := d.node(kpath, v)
		if !ok || isNull(v) {
			continue
		}
		present[key] = true
		fn(key, kpath, v)
	}
	return present
}

// suggest returns the known key the unknown key was likely meant to be, or
// "": one equal but for case, the only one it is a prefix of, or one within
// an edit (two for keys longer than four bytes).
func suggest(key string, known []string) string {
	lower := strings.ToLower(key)
	var prefixed []string
	for _, k := range known {
		if strings.EqualFold(k, key) {
			return k
		}
		if len(key) >= 3 && strings.HasPrefix(strings.ToLower(k), lower) {
			prefixed = append(prefixed, k)
		}
	}
	if len(prefixed) == 1 {
		return prefixed[0]
	}
	best, bestDist := "", 2
	if len(key) > 4 {
		bestDist = 3
	}
	for _, k := range known {
		if dist := editDistance(lower, strings.ToLower(k)); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return max(len(a), len(b))
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// list calls fn with every item of the sequence n at path, resolved. It
// reports n if it is not a sequence.
func (d *decoder) list(path string, n *yaml.Node, fn func(i int, path string, item *yaml.Node)) {
	if n.Kind != yaml.SequenceNode {
		d.wrongType(path, n, "a list")
		return
	}
	for i, item := range n.Content {
		ipath := index(path, i)
		item, ok := d.node(ipath, item)
		if !ok {
			return
		}
		fn(i, ipath, item)
	}
}

// str returns the text of a scalar. Any scalar will do: the callers check the
// text and quote it when it is wrong.
func (d *decoder) str(path string, n *yaml.Node) (string, bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.wrongType(path, n, "a string")
		return "", false
	}
	return n.Value, true
}

var digits = regexp.MustCompile(`^[-+]?[0-9]+$`)

// integer returns an integer between lo and hi; rng describes the range for
// the error message.
func (d *decoder) integer(path string, n *yaml.Node, lo, hi int64, rng string) (int64, bool) {
	if n.Kind != yaml.ScalarNode {
		d.wrongType(path, n, "an integer")
		return 0, false
	}
	var v int64
	switch tag := n.ShortTag(); {
	case tag == "!!int":
		if err := n.Decode(&v); err != nil {
			d.errorf(path, n, "%s is out of range (%s)", n.Value, rng)
			return 0, false
		}
	case tag == "!!float" && digits.MatchString(n.Value):
		// An integer too large for int64.
		d.errorf(path, n, "%s is out of range (%s)", n.Value, rng)
		return 0, false
	default:
		d.wrongType(path, n, "an integer")
		return 0, false
	}
	if v < lo || v > hi {
		d.errorf(path, n, "%s is out of range (%s)", n.Value, rng)
		return 0, false
	}
	return v, true
}

func (d *decoder) boolean(path string, n *yaml.Node) (bool, bool) {
	var b bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
		d.wrongType(path, n, "true or false")
		return false, false
	}
	return b, true
}

// oneOf returns the text of n if it is one of options.
func (d *decoder) oneOf(path string, n *yaml.Node, options ...string) (string, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return "", false
	}
	if !slices.Contains(options, s) {
		d.errorf(path, n, "%s is not one of %s", value(n), strings.Join(options, ", "))
		return "", false
	}
	return s, true
}

// addr returns the IP address n holds. Zones and IPv4-mapped IPv6 addresses
// are refused, so that every address has one spelling and one family; so are
// addresses that cannot be a VIP, a backend or a source when unicast is set.
func (d *decoder) addr(path string, n *yaml.Node, unicast bool) (netip.Addr, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		d.errorf(path, n, "%s is not an IP address", value(n))
	case a.Zone() != "":
		d.errorf(path, n, "%s has an IPv6 zone, which is not allowed here", value(n))
	case a.Is4In6():
		d.errorf(path, n, "%s is an IPv4-mapped IPv6 address; write %s", value(n), a.Unmap())
	case unicast && !isUnicast(a):
		d.errorf(path, n, "%s is not a unicast address", value(n))
	default:
		return a, true
	}
	return netip.Addr{}, false
}

// isUnicast reports whether a can be the address of a VIP or a host.
func isUnicast(a netip.Addr) bool {
	return !a.IsUnspecified() && !a.IsMulticast() && !a.IsLoopback() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// prefix returns the prefix n holds, in canonical form (no host bits set).
func (d *decoder) prefix(path string, n *yaml.Node) (netip.Prefix, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		d.errorf(path, n, "%s is not a CIDR prefix", value(n))
	case p.Addr().Is4In6():
		d.errorf(path, n, "%s is an IPv4-mapped IPv6 prefix; write it as IPv4", value(n))
	case p.Masked() != p:
		d.errorf(path, n, "%s has host bits set; write %q", value(n), p.Masked().String())
	default:
		return p, true
	}
	return netip.Prefix{}, false
}
