package policy

import (
	"fmt"
	"strings"
)

// Error is one problem in a policy file. Load and Parse return every Error they find, joined with
// errors.Join, in document order. Error() reads
//
//	policy.yaml:12:9: rules[0].match.executables[1]: "/usr/bin/sigger": no such file (check the path; ...)
type Error struct {
	File string // the file name given to Load or Parse
	Line int    // 1-based; 0 when the problem concerns the whole file
	Col  int    // 1-based; 0 when unknown
	Key  string // key path such as rules[0].match.executables[1]; empty for the whole file
	Msg  string // what is wrong and what to do about it
	Err  error  // underlying error, if any (for errors.Is, e.g. fs.ErrNotExist)
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Col > 0 {
			fmt.Fprintf(&b, ":%d", e.Col)
		}
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Pos is a position in the policy file, 1-based.
type Pos struct {
	Line, Col int
}
