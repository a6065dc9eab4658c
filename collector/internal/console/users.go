package console

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Roles of console users.
const (
	RoleViewer = "viewer"
	RoleAdmin  = "admin"
)

// argon2id parameters for new hashes (RFC 9106's second recommended option, with 64 MiB).
const (
	argonTime    = 3
	argonMemory  = 64 * 1024
	argonThreads = 2
	argonKeyLen  = 32
)

// User is one console operator.
type User struct {
	Name string
	Role string
	Hash string // $argon2id$... or $2a$/$2b$/$2y$ (bcrypt)
}

// ValidUserName reports whether s is acceptable as a user name: 1-64 of a-z A-Z 0-9 . _ - @.
func ValidUserName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r == '.' || r == '_' || r == '-' || r == '@' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}

// ParseUsers reads a users file: one "name:role:hash" per line; blank lines and lines starting with #
// are ignored.
func ParseUsers(data []byte, file string) (map[string]User, error) {
	users := map[string]User{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			return nil, fmt.Errorf("%s:%d: want name:role:hash (create entries with 'keyguard-collector console user add')", file, n)
		}
		u := User{Name: parts[0], Role: parts[1], Hash: parts[2]}
		if !ValidUserName(u.Name) {
			return nil, fmt.Errorf("%s:%d: user name %q must be 1-64 of a-z A-Z 0-9 . _ - @", file, n, u.Name)
		}
		if u.Role != RoleViewer && u.Role != RoleAdmin {
			return nil, fmt.Errorf("%s:%d: role %q of %s must be viewer or admin", file, n, u.Role, u.Name)
		}
		if !strings.HasPrefix(u.Hash, "$argon2id$") && !strings.HasPrefix(u.Hash, "$2") {
			return nil, fmt.Errorf("%s:%d: password hash of %s is neither argon2id ($argon2id$...) nor bcrypt ($2b$...)", file, n, u.Name)
		}
		if _, dup := users[u.Name]; dup {
			return nil, fmt.Errorf("%s:%d: user %s listed twice", file, n, u.Name)
		}
		users[u.Name] = u
	}
	return users, sc.Err()
}

// HashPassword returns an argon2id hash in the PHC string format.
func HashPassword(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

var errBadHash = errors.New("malformed password hash")

// CheckPassword reports whether password matches hash (argon2id or bcrypt).
func CheckPassword(hash, password string) (bool, error) {
	if strings.HasPrefix(hash, "$2") {
		err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(password))
		if errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
			return false, nil
		}
		return err == nil, err
	}
	// $argon2id$v=19$m=65536,t=3,p=2$salt$key
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var v int
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return false, errBadHash
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || m > 1<<21 || t == 0 || t > 64 || p == 0 {
		return false, errBadHash
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	key, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(key) == 0 || len(key) > 128 {
		return false, errBadHash
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(key)))
	return subtle.ConstantTimeCompare(got, key) == 1, nil
}

// dummyHash is checked against when the user does not exist, so that an unknown user costs the same
// time as a wrong password.
var dummyHash = sync.OnceValue(func() string {
	h, _ := HashPassword("keyguard-dummy-password")
	return h
})

// userDB is the users file, reloaded when it changes (checked at most once a second).
type userDB struct {
	path    string
	mu      sync.Mutex
	users   map[string]User
	mtime   time.Time
	size    int64
	checked time.Time
}

func loadUserDB(path string) (*userDB, error) {
	db := &userDB{path: path}
	if err := db.reload(); err != nil {
		return nil, err
	}
	return db, nil
}

func (db *userDB) reload() error {
	fi, err := os.Stat(db.path)
	if err != nil {
		return fmt.Errorf("read console users file: %w (create it with 'keyguard-collector console user add -users %s -name NAME -role admin')", err, db.path)
	}
	data, err := os.ReadFile(db.path)
	if err != nil {
		return fmt.Errorf("read console users file: %w", err)
	}
	users, err := ParseUsers(data, db.path)
	if err != nil {
		return err
	}
	db.users, db.mtime, db.size = users, fi.ModTime(), fi.Size()
	return nil
}

// lookup returns the user as the file currently says (a removed user or changed role applies at once).
func (db *userDB) lookup(name string) (User, bool) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if time.Since(db.checked) > time.Second {
		db.checked = time.Now()
		if fi, err := os.Stat(db.path); err == nil && (!fi.ModTime().Equal(db.mtime) || fi.Size() != db.size) {
			_ = db.reload() // keep the previous users when the new file is broken
		}
	}
	u, ok := db.users[name]
	return u, ok
}

// AddUser adds or replaces a user in a users file (created 0600 if missing), atomically.
func AddUser(path, name, role, password string) error {
	if !ValidUserName(name) {
		return fmt.Errorf("user name %q must be 1-64 of a-z A-Z 0-9 . _ - @", name)
	}
	if role != RoleViewer && role != RoleAdmin {
		return fmt.Errorf("role %q must be viewer or admin", role)
	}
	if len(password) < 12 {
		return errors.New("password must be at least 12 characters")
	}
	if len(password) > 1024 {
		return errors.New("password must be at most 1024 bytes")
	}
	hash, err := HashPassword(password)
	if err != nil {
		return err
	}
	var lines []string
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read users file: %w", err)
	}
	if err == nil {
		if _, err := ParseUsers(data, path); err != nil {
			return err
		}
		for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), name+":") {
				continue
			}
			if l != "" {
				lines = append(lines, l)
			}
		}
	} else {
		lines = append(lines, "# keyguard console users: name:role:argon2id-or-bcrypt-hash (keyguard-collector console user add)")
	}
	lines = append(lines, name+":"+role+":"+hash)
	tmp, err := os.CreateTemp(filepath.Dir(path), ".users-*")
	if err != nil {
		return fmt.Errorf("write users file: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.WriteString(strings.Join(lines, "\n") + "\n")
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write users file %s: %w", path, err)
	}
	return nil
}
