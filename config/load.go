package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Error is one problem found in a configuration file.
type Error struct {
	File  string // the file as named to Load or Parse; may be ""
	Line  int    // 1-based
	Col   int    // 1-based
	Field string // dotted path such as "routes[1].websocket.on_limit"; "" for the file as a whole
	Msg   string
}

// Error formats e as "FILE:LINE:COL: field.path: message". The file part is
// left out when File is "", and the field part when Field is "".
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteByte(':')
	}
	fmt.Fprintf(&b, "%d:%d: ", e.Line, e.Col)
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads the configuration file at path and parses it with Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(path, data)
}

// Parse parses and validates the YAML configuration in data. File names it
// in errors and in Config.File, and relative paths in the configuration are
// resolved against its directory ("" means the current directory).
// ${NAME} in values is replaced by the environment variable NAME.
//
// On failure the error joins (errors.Join) one *Error per problem, sorted by
// line and column, so that err.Error() has one problem per line.
func Parse(file string, data []byte) (*Config, error) {
	return parse(file, data, os.LookupEnv)
}

// maxSteps bounds the nodes visited while walking the document. Aliases can
// make a small file name the same large subtree many times; a file this big
// is a mistake or an attack, not a configuration.
const maxSteps = 1_000_000

// parse is Parse with the environment lookup injected, for tests.
func parse(file string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	d := &decoder{
		file:      file,
		lookupEnv: lookupEnv,
		seen:      make(map[any]loc),
	}
	root, ok := d.document(data)
	if !ok {
		return nil, d.err()
	}
	c := &Config{File: file}
	d.config(root, c)
	setDefaults(c, d.isSet)
	resolvePaths(c, filepath.Dir(file)) // "." when file is ""
	d.validate(c, root)
	if err := d.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// loc is where a value was written: its node and field path.
type loc struct {
	node *yaml.Node
	path string
}

// decoder walks the yaml.Node tree into a Config, collecting errors.
type decoder struct {
	file      string
	lookupEnv func(string) (string, bool)
	errs      []*Error
	// seen records, by the address of the Config field written, where the
	// file set it. Fields absent from seen get their defaults.
	seen  map[any]loc
	steps int  // nodes visited, bounded by maxSteps
	over  bool // the walk ran over maxSteps; further errors are noise
}

func (d *decoder) errorAt(line, col int, field, format string, args ...any) {
	if d.over {
		return
	}
	d.errs = append(d.errs, &Error{
		File:  d.file,
		Line:  line,
		Col:   col,
		Field: field,
		Msg:   fmt.Sprintf(format, args...),
	})
}

func (d *decoder) errorf(n *yaml.Node, field, format string, args ...any) {
	line, col := 1, 1
	if n != nil && n.Line > 0 {
		line, col = n.Line, n.Column
	}
	d.errorAt(line, col, field, format, args...)
}

// err returns the collected errors sorted by position and without
// duplicates (an aliased node can be reported once per use), or nil.
func (d *decoder) err() error {
	if len(d.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(d.errs, func(a, b *Error) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
	})
	d.errs = slices.CompactFunc(d.errs, func(a, b *Error) bool { return *a == *b })
	errs := make([]error, len(d.errs))
	for i, e := range d.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// mark records that the file set the field at ptr, at n.
func (d *decoder) mark(ptr any, n *yaml.Node, path string) {
	d.seen[ptr] = loc{n, path}
}

// isSet reports whether the file set the field at ptr.
func (d *decoder) isSet(ptr any) bool {
	_, ok := d.seen[ptr]
	return ok
}

// where returns where the field at ptr was set, or fallback when it was
// not.
func (d *decoder) where(ptr any, fallback loc) loc {
	if l, ok := d.seen[ptr]; ok {
		return l
	}
	return fallback
}

// document parses data into its root node: the top-level mapping, or nil
// for an empty document.
func (d *decoder) document(data []byte) (*yaml.Node, bool) {
	if !d.checkText(data) {
		return nil, false
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, true
		}
		d.syntaxError(data, err)
		return nil, false
	}
	// Further documents must be empty: a trailing "---" is harmless, a
	// second configuration is a mistake.
	for {
		var next yaml.Node
		err := dec.Decode(&next)
		if err == io.EOF {
			break
		}
		if err != nil {
			d.syntaxError(data, err)
			return nil, false
		}
		if len(next.Content) > 0 && !isNull(next.Content[0]) {
			d.errorf(next.Content[0], "", "a second YAML document; the file must hold one")
			return nil, false
		}
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		return nil, true
	}
	return doc.Content[0], true
}

// checkText reports invalid UTF-8 and characters YAML forbids with their
// exact position; the YAML library reports them without one.
func (d *decoder) checkText(data []byte) bool {
	line, col := 1, 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			d.errorAt(line, col, "", "invalid UTF-8 (byte 0x%02x); the file must be UTF-8 text", data[i])
			return false
		case !yamlPrintable(r):
			d.errorAt(line, col, "", "character %U is not allowed in YAML", r)
			return false
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		i += size
	}
	return true
}

// yamlPrintable reports whether YAML 1.2 allows r in a stream.
func yamlPrintable(r rune) bool {
	switch {
	case r == '\t', r == '\n', r == '\r', r == 0x85:
		return true
	case r >= 0x20 && r <= 0x7e, r >= 0xa0 && r <= 0xd7ff:
		return true
	case r >= 0xe000 && r <= 0xfffd, r >= 0x10000 && r <= 0x10ffff:
		return true
	}
	return false
}

var (
	yamlLineRE   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	yamlAnchorRE = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)
)

// parserProblems are the errors of the YAML library's parser (the others
// come from its scanner). For these the library reports the line of the
// collection or node being parsed counted from 0, not from 1 as it does for
// the scanner's, so the line it gives is one before the one meant.
var parserProblems = []string{
	"did not find expected <stream-start>",
	"did not find expected <document start>",
	"found undefined tag handle",
	"did not find expected node content",
	"did not find expected '-' indicator",
	"did not find expected key",
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"found duplicate %YAML directive",
	"found incompatible YAML document",
	"found duplicate %TAG directive",
}

// syntaxError turns an error of the YAML library ("yaml: line N: msg") into
// a positioned Error. The library gives no column; the error points at the
// start of the line.
func (d *decoder) syntaxError(data []byte, err error) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		problem := m[2]
		if slices.Contains(parserProblems, problem) {
			line++
		}
		if strings.HasSuffix(problem, "',' or '}'") || strings.HasSuffix(problem, "',' or ']'") {
			// Most often a value with a flow indicator ({ } [ ] ,) or a
			// ${NAME} written bare inside a {...} or [...].
			problem += " (in the {...} or [...] that starts on this line; quote a value that holds { } [ ] or , such as \"${NAME}\")"
		}
		d.errorAt(max(line, 1), 1, "", "invalid YAML: %s", problem)
		return
	}
	if m := yamlAnchorRE.FindStringSubmatch(msg); m != nil {
		line, col := 1, 1
		if i := bytes.Index(data, []byte("*"+m[1])); i >= 0 {
			line, col = position(data, i)
		}
		d.errorAt(line, col, "", "invalid YAML: alias *%s names no anchor (&%s) defined before it", m[1], m[1])
		return
	}
	d.errorAt(1, 1, "", "invalid YAML: %s", strings.TrimPrefix(msg, "yaml: "))
}

// position returns the 1-based line and column of byte offset i in data.
func position(data []byte, i int) (line, col int) {
	before := data[:i]
	line = bytes.Count(before, []byte("\n")) + 1
	col = utf8.RuneCount(before[bytes.LastIndexByte(before, '\n')+1:]) + 1
	return line, col
}

// resolve follows aliases and returns the node that holds the value, or nil
// when the value is null (absent) or the walk is over budget.
func (d *decoder) resolve(n *yaml.Node) *yaml.Node {
	if !d.spend(n, 1) {
		return nil
	}
	// An alias never names another alias, but the bound costs nothing.
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 8; i++ {
		n = n.Alias
	}
	if n == nil || n.Kind == yaml.AliasNode || isNull(n) {
		return nil
	}
	return n
}

// spend uses k steps of the walk's budget and reports whether the walk
// may go on.
func (d *decoder) spend(n *yaml.Node, k int) bool {
	if d.over {
		return false
	}
	d.steps += k
	if d.steps > maxSteps {
		d.errorf(n, "", "the document is too large once its aliases are expanded")
		d.over = true
		return false
	}
	return true
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what n is, for "want X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(short(n.Value))
	}
	return "something else"
}

// short truncates s for quoting in a message.
func short(s string) string {
	const max = 60
	if len(s) <= max {
		return s
	}
	i := max
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

// field is one known key of a mapping and what to do with its value.
type field struct {
	name   string
	decode func(n *yaml.Node, path string)
}

// pair is one key and value of a mapping.
type pair struct{ key, val *yaml.Node }

// mapping checks that n is a mapping whose keys are all among fields and
// calls each field's decode with its value. Null values are skipped: an
// absent value takes the default. Unknown and duplicate keys are errors.
// unknown, when not nil, may explain a key that is not a field better
// than the default message.
func (d *decoder) mapping(n *yaml.Node, path string, fields []field, unknown func(key string) string) {
	if n = d.resolve(n); n == nil {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "want a mapping, got %s", describe(n))
		return
	}
	for _, p := range d.pairs(n, path, 0) {
		i := slices.IndexFunc(fields, func(f field) bool { return f.name == p.key.Value })
		if i < 0 {
			msg := ""
			if unknown != nil {
				msg = unknown(p.key.Value)
			}
			if msg == "" {
				msg = fmt.Sprintf("unknown field %q", short(p.key.Value))
				if s := suggest(p.key.Value, fields); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
			}
			d.errorf(p.key, path, "%s", msg)
			continue
		}
		if d.resolve(p.val) == nil {
			continue
		}
		fields[i].decode(p.val, join(path, p.key.Value))
	}
}

// pairs returns the key/value pairs of mapping n with merge keys (<<)
// expanded. Keys written in n win over merged ones, and among merged
// mappings the first wins, as YAML specifies.
func (d *decoder) pairs(n *yaml.Node, path string, depth int) []pair {
	if !d.spend(n, len(n.Content)/2) {
		return nil
	}
	var out, merged []pair
	first := make(map[string]*yaml.Node)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "a key must be a plain name, not %s", describe(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			merged = append(merged, d.merge(v, path, depth)...)
			continue
		}
		if f := first[k.Value]; f != nil {
			d.errorf(k, path, "duplicate field %q (first at line %d)", short(k.Value), f.Line)
			continue
		}
		first[k.Value] = k
		out = append(out, pair{k, v})
	}
	for _, p := range merged {
		if first[p.key.Value] == nil {
			first[p.key.Value] = p.key
			out = append(out, p)
		}
	}
	return out
}

// merge returns the pairs a merge key (<<) brings in: those of a mapping
// or of a list of mappings.
func (d *decoder) merge(v *yaml.Node, path string, depth int) []pair {
	const maxDepth = 8
	if depth >= maxDepth {
		d.errorf(v, path, "merge keys (<<) nested more than %d deep", maxDepth)
		return nil
	}
	n := d.resolve(v)
	if n == nil {
		return nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		return d.pairs(n, path, depth+1)
	case yaml.SequenceNode:
		var out []pair
		for _, item := range n.Content {
			m := d.resolve(item)
			if m == nil || m.Kind != yaml.MappingNode {
				d.errorf(item, path, "merge key (<<) wants a mapping or a list of mappings")
				continue
			}
			out = append(out, d.pairs(m, path, depth+1)...)
		}
		return out
	}
	d.errorf(v, path, "merge key (<<) wants a mapping or a list of mappings, got %s", describe(n))
	return nil
}

// list checks that n is a list and returns its items, or nil after
// reporting an error.
func (d *decoder) list(n *yaml.Node, path string) []*yaml.Node {
	if n = d.resolve(n); n == nil {
		return nil
	}
	switch n.Kind {
	case yaml.SequenceNode:
		return n.Content
	case yaml.ScalarNode:
		d.errorf(n, path, "want a list, got %s (write [%s] for a list of one)", describe(n), short(n.Value))
	default:
		d.errorf(n, path, "want a list, got %s", describe(n))
	}
	return nil
}

// scalar returns the value of scalar node n with ${NAME} substituted, or
// false after reporting an error.
func (d *decoder) scalar(n *yaml.Node, path string) (string, bool) {
	r := d.resolve(n)
	if r == nil {
		d.errorf(n, path, "want a value, got nothing")
		return "", false
	}
	if r.Kind != yaml.ScalarNode {
		d.errorf(r, path, "want a single value, got %s", describe(r))
		return "", false
	}
	s, err := expandEnv(r.Value, d.lookupEnv)
	if err != nil {
		d.errorf(r, path, "%v", err)
		return "", false
	}
	return s, true
}

// join appends key to a field path.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// index appends a list index to a field path.
func index(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// oneOf lists words as "a, b or c".
func oneOf(words []string) string {
	switch len(words) {
	case 0:
		return ""
	case 1:
		return words[0]
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// suggest returns the known field closest to key when one is obviously
// meant: a different case, or a small typo.
func suggest(key string, fields []field) string {
	best, bestDist := "", 0
	for _, f := range fields {
		if strings.EqualFold(f.name, key) {
			return f.name
		}
		dist := editDistance(strings.ToLower(key), f.name)
		if dist <= max(1, len(f.name)/4) && (best == "" || dist < bestDist) {
			best, bestDist = f.name, dist
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b,
// in bytes: insertions, deletions, substitutions and swaps of neighbours
// each count one.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return max(len(a), len(b))
	}
	// d[i][j] is the distance between a[:i] and b[:j].
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
