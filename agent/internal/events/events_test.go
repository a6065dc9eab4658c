package events

import "testing"

func TestExePath(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want string
	}{
		{"testproc\x00bin\x00/\x00", "/bin/testproc"},
		{"victim\x00kg\x00tmp\x00/\x00", "/tmp/kg/victim"},
		{"/\x00", "/"},
		{"testproc\x00bin\x00", ""}, // truncated: no root marker
		{"", ""},
	} {
		b := make([]int8, 256)
		for i := range tc.raw {
			b[i] = int8(tc.raw[i])
		}
		if got := exePath(b); got != tc.want {
			t.Errorf("exePath(%q) = %q, want %q", tc.raw, got, tc.want)
		}
	}
}

func TestAccessModeNames(t *testing.T) {
	got := AccessModeNames(0x0a)
	if len(got) != 2 || got[0] != "attach" || got[1] != "fscreds" {
		t.Fatalf("AccessModeNames(0x0a) = %v", got)
	}
}
