package console_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/keyguard/keyguard/collector/internal/console"
)

func TestPasswordHashes(t *testing.T) {
	argon, err := console.HashPassword("correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	bc, err := bcrypt.GenerateFromPassword([]byte("correct horse battery"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, hash, password string
		ok, fails            bool
	}{
		{"argon2id right", argon, "correct horse battery", true, false},
		{"argon2id wrong", argon, "correct horse batterY", false, false},
		{"argon2id empty", argon, "", false, false},
		{"bcrypt right", string(bc), "correct horse battery", true, false},
		{"bcrypt wrong", string(bc), "wrong", false, false},
		{"argon2id truncated", argon[:len(argon)-30], "correct horse battery", false, true},
		{"argon2id bad params", strings.Replace(argon, "m=65536", "m=0", 1), "correct horse battery", false, true},
		{"argon2i not id", strings.Replace(argon, "argon2id", "argon2i", 1), "correct horse battery", false, true},
		{"garbage", "$argon2id$x", "x", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, err := console.CheckPassword(tc.hash, tc.password)
			if ok != tc.ok || (err != nil) != tc.fails {
				t.Fatalf("CheckPassword = %v, %v; want %v, error %v", ok, err, tc.ok, tc.fails)
			}
		})
	}
}

func TestUsersFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	if err := console.AddUser(path, "alice", "admin", "long enough password"); err != nil {
		t.Fatal(err)
	}
	if err := console.AddUser(path, "bob", "viewer", "another long password"); err != nil {
		t.Fatal(err)
	}
	if err := console.AddUser(path, "alice", "viewer", "alice's new password"); err != nil { // replaces
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("users file mode %v, %v; want 0600", fi.Mode(), err)
	}
	data, _ := os.ReadFile(path)
	users, err := console.ParseUsers(data, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 2 || users["alice"].Role != "viewer" || users["bob"].Role != "viewer" {
		t.Fatalf("users %+v", users)
	}
	if ok, _ := console.CheckPassword(users["alice"].Hash, "alice's new password"); !ok {
		t.Fatal("replaced password does not check")
	}
	for _, tc := range []struct{ name, role, pass, want string }{
		{"al ice", "admin", "long enough password", "user name"},
		{"carol", "root", "long enough password", "role"},
		{"carol", "admin", "short", "at least 12"},
		{strings.Repeat("a", 65), "admin", "long enough password", "user name"},
	} {
		if err := console.AddUser(path, tc.name, tc.role, tc.pass); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("AddUser(%q, %q): %v, want an error about %s", tc.name, tc.role, err, tc.want)
		}
	}
	for _, tc := range []struct{ file, want string }{
		{"alice:admin", "name:role:hash"},
		{"alice:boss:$2b$xx", "role"},
		{"alice:admin:plaintext", "neither argon2id"},
		{"a<b:admin:$2b$xx", "user name"},
		{"alice:admin:$2b$x\nalice:viewer:$2b$y", "twice"},
	} {
		if _, err := console.ParseUsers([]byte(tc.file), "users"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseUsers(%q): %v, want an error about %s", tc.file, err, tc.want)
		}
	}
}
