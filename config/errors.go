package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Error is one problem in a configuration file, at a position in it.
type Error struct {
	// File is the name the file was parsed under.
	File string
	// Path names the offending item, such as services[2].backends[0].address.
	// It is empty for problems with the file as a whole.
	Path string
	// Line and Column locate the offending node, counting from 1. Column is 0
	// when the YAML parser reported only a line.
	Line, Column int
	// Message says what is wrong, without the path or the position.
	Message string
}

// Error formats e as "path: message (line L, column C)", for example
//
//	services[2].backends[0].address: "10.0.0.300" is not an IP address (line 14, column 18)
//
// The file name is left out; callers that handle several files prefix it.
func (e *Error) Error() string {
	var b strings.Builder
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Message)
	if e.Column > 0 {
		fmt.Fprintf(&b, " (line %d, column %d)", e.Line, e.Column)
	} else {
		fmt.Fprintf(&b, " (line %d)", e.Line)
	}
	return b.String()
}

// ErrorList is every problem found in a configuration file. [Parse], [Load]
// and [Check] return it sorted by position.
type ErrorList []*Error

// Error prints one error per line, in the list's order.
func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the errors of the list, so that errors.As finds an *Error.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// sort orders the list by line, then column; errors at the same position
// keep the order they were found in.
func (l ErrorList) sort() {
	slices.SortStableFunc(l, func(a, b *Error) int {
		if c := cmp.Compare(a.Line, b.Line); c != 0 {
			return c
		}
		return cmp.Compare(a.Column, b.Column)
	})
}
