package chain

import (
	"bytes"
	"testing"
)

func TestLinkCommitsToEveryInput(t *testing.T) {
	base := NewHasher(nil).Link(Genesis("h1"), "h1", 1, 1, Digest([]byte("payload")))
	cases := []struct {
		name string
		got  []byte
	}{
		{"other prev", NewHasher(nil).Link(Genesis("h2"), "h1", 1, 1, Digest([]byte("payload")))},
		{"other host", NewHasher(nil).Link(Genesis("h1"), "h2", 1, 1, Digest([]byte("payload")))},
		{"other seq", NewHasher(nil).Link(Genesis("h1"), "h1", 2, 1, Digest([]byte("payload")))},
		{"other pos", NewHasher(nil).Link(Genesis("h1"), "h1", 1, 2, Digest([]byte("payload")))},
		{"other payload", NewHasher(nil).Link(Genesis("h1"), "h1", 1, 1, Digest([]byte("payloaD")))},
		{"keyed", NewHasher([]byte("k")).Link(Genesis("h1"), "h1", 1, 1, Digest([]byte("payload")))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if bytes.Equal(tc.got, base) {
				t.Fatalf("hash did not change")
			}
			if len(tc.got) != Size {
				t.Fatalf("len %d", len(tc.got))
			}
		})
	}
	if again := NewHasher(nil).Link(Genesis("h1"), "h1", 1, 1, Digest([]byte("payload"))); !bytes.Equal(again, base) {
		t.Fatal("not deterministic")
	}
}
