package policy

import (
	"errors"
	"os"
	"path"
	"strings"
)

// Glob syntax: an absolute slash-separated path; each element is a path.Match pattern ("*", "?",
// "[a-z]", "\\" escapes; none of them matches "/"), and an element that is exactly "**" matches zero
// or more directories (at the end of a pattern: every file below). Elements "." and ".." and empty
// elements ("//", trailing "/") are refused so that a pattern names files one way only.

func validGlob(pattern string) error {
	if !strings.HasPrefix(pattern, "/") {
		return errors.New("not an absolute path")
	}
	if pattern == "/" {
		return errors.New("names the root directory, not files")
	}
	for _, e := range strings.Split(pattern[1:], "/") {
		switch {
		case e == "":
			if strings.HasSuffix(pattern, "/") {
				return errors.New("ends with \"/\"; a pattern names files (use \"dir/*\" or \"dir/**\" for everything below dir)")
			}
			return errors.New("has an empty path element (\"//\")")
		case e == "." || e == "..":
			return errors.New("has a \".\" or \"..\" element; write the path without it")
		case e == "**":
		case strings.Contains(e, "**"):
			return errors.New("\"**\" must be a whole path element (\"/a/**/b.pem\"), not part of one; use \"*\" inside an element")
		default:
			if _, err := path.Match(e, ""); err != nil {
				return errors.New("bad glob element " + quote(e) + ": unbalanced [ ] or trailing \\ (syntax of Go's path.Match)")
			}
		}
	}
	return nil
}

func quote(s string) string { return `"` + s + `"` }

// unescape returns a pattern element without wildcards as the name it matches ("\" escapes removed).
func unescape(e string) string {
	if !strings.Contains(e, `\`) {
		return e
	}
	var b strings.Builder
	for i := 0; i < len(e); i++ {
		if e[i] == '\\' && i+1 < len(e) {
			i++
		}
		b.WriteByte(e[i])
	}
	return b.String()
}

// walker expands globs against the live filesystem, recording every directory it looked into (and for
// which names) so a watcher can wait for exactly the changes that would alter the result.
type walker struct {
	// lookup(dir, name): the result depends on dir's entry name. list(dir): on all of dir's entries.
	lookup func(dir, name string)
	list   func(dir string)
}

func (w *walker) noteLookup(dir, name string) {
	if w.lookup != nil {
		w.lookup(dir, name)
	}
}

func (w *walker) noteList(dir string) {
	if w.list != nil {
		w.list(dir)
	}
}

const maxSymlinkHops = 40

// realpath resolves every symlink in the absolute, clean path p, noting each directory entry it
// depends on (so that replacing a symlink anywhere on the way is noticed). It returns the path without
// symlinks, or an error from the first failing step.
func (w *walker) realpath(p string) (string, error) {
	rest := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := "/"
	hops := 0
	for len(rest) > 0 {
		e := rest[0]
		rest = rest[1:]
		switch e {
		case "", ".":
			continue
		case "..":
			cur = path.Dir(cur)
			continue
		}
		w.noteLookup(cur, e)
		next := path.Join(cur, e)
		fi, err := os.Lstat(next)
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > maxSymlinkHops {
			return "", &os.PathError{Op: "resolve", Path: p, Err: errTooManyLinks}
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return cur, nil
}

var errTooManyLinks = errors.New("too many levels of symbolic links")

// expand calls emit with each path that matches pattern and is not a directory, after resolving
// symlinks in it: real is the symlink-free path (the file the kernel will open), found the path as
// matched. Directories reached through "**" are entered only when they are real directories, not
// symlinks, so a symlink loop cannot trap the walk. A path is emitted once even if several "**"
// expansions reach it.
func (w *walker) expand(pattern string, emit func(found, real string)) {
	var elems []string
	for _, e := range strings.Split(strings.TrimPrefix(pattern, "/"), "/") {
		if e == "**" && len(elems) > 0 && elems[len(elems)-1] == "**" {
			continue // "**/**" is "**"
		}
		elems = append(elems, e)
	}
	seen := map[string]bool{}
	w.walk("/", "/", elems, func(found, real string) {
		if !seen[real] {
			seen[real] = true
			emit(found, real)
		}
	})
}

// walk matches elems below the directory shown as shown, whose symlink-free path is dir.
func (w *walker) walk(shown, dir string, elems []string, emit func(found, real string)) {
	if len(elems) == 0 {
		return
	}
	e, rest := elems[0], elems[1:]
	switch {
	case e == "**":
		if len(rest) > 0 {
			w.walk(shown, dir, rest, emit) // zero directories
		}
		w.noteList(dir)
		ents, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, de := range ents {
			child, childShown := path.Join(dir, de.Name()), path.Join(shown, de.Name())
			if de.IsDir() {
				w.walk(childShown, child, elems, emit) // one more directory, keep "**"
				continue
			}
			if len(rest) == 0 {
				w.leaf(childShown, child, de.Type()&os.ModeSymlink != 0, emit)
			}
		}
	case !strings.ContainsAny(e, "*?["):
		name := unescape(e)
		w.noteLookup(dir, name)
		child, childShown := path.Join(dir, name), path.Join(shown, name)
		fi, err := os.Lstat(child)
		if err != nil {
			return
		}
		w.step(childShown, child, fi.Mode(), rest, emit)
	default:
		w.noteList(dir)
		ents, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, de := range ents {
			if ok, _ := path.Match(e, de.Name()); !ok {
				continue
			}
			child, childShown := path.Join(dir, de.Name()), path.Join(shown, de.Name())
			w.step(childShown, child, de.Type(), rest, emit)
		}
	}
}

// step continues the walk at child, an entry that matched one pattern element.
func (w *walker) step(shown, child string, mode os.FileMode, rest []string, emit func(found, real string)) {
	if len(rest) == 0 {
		if !mode.IsDir() {
			w.leaf(shown, child, mode&os.ModeSymlink != 0, emit)
		}
		return
	}
	if mode&os.ModeSymlink != 0 {
		real, err := w.realpath(child)
		if err != nil {
			return
		}
		child = real
	}
	w.walk(shown, child, rest, emit)
}

func (w *walker) leaf(shown, child string, symlink bool, emit func(found, real string)) {
	if symlink {
		real, err := w.realpath(child)
		if err != nil {
			return
		}
		child = real
	}
	emit(shown, child)
}
