package policy

import (
	"os"
	"path/filepath"
	"testing"
)

// A fake sysfs: 8:1 is a partition of 8:0; 7:0 is a loop device backed by an image on 8:1; 253:0 is a
// dm device over 8:1.
func fakeSysfs(t *testing.T, image string) string {
	t.Helper()
	root := t.TempDir()
	mk := func(rel, dev string, extra map[string]string) {
		d := filepath.Join(root, "devices", rel)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "dev"), []byte(dev+"\n"), 0o644)
		for name, body := range extra {
			os.MkdirAll(filepath.Dir(filepath.Join(d, name)), 0o755)
			os.WriteFile(filepath.Join(d, name), []byte(body), 0o644)
		}
		os.MkdirAll(filepath.Join(root, "dev", "block"), 0o755)
		if err := os.Symlink(d, filepath.Join(root, "dev", "block", dev)); err != nil {
			t.Fatal(err)
		}
	}
	mk("sda", "8:0", nil)
	mk("sda/sda1", "8:1", map[string]string{"partition": "1"})
	mk("loop0", "7:0", map[string]string{"loop/backing_file": image + "\n"})
	mk("dm-0", "253:0", nil)
	os.MkdirAll(filepath.Join(root, "devices", "dm-0", "slaves"), 0o755)
	os.Symlink(filepath.Join(root, "devices", "sda", "sda1"), filepath.Join(root, "devices", "dm-0", "slaves", "sda1"))
	return root
}

func TestRawDisks(t *testing.T) {
	image := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(image, []byte("img"), 0o644)
	sysfs := fakeSysfs(t, image)
	st := newStatter()
	img, err := st.stat(image)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name       string
		dev        uint64
		wantDevs   []uint64
		wantImages int
	}{
		{"partition and its disk", MkKernelDev(8, 1), []uint64{MkKernelDev(8, 1), MkKernelDev(8, 0)}, 0},
		{"loop device and its image", MkKernelDev(7, 0), []uint64{MkKernelDev(7, 0)}, 1},
		{"dm device and its lower devices", MkKernelDev(253, 0), []uint64{MkKernelDev(253, 0), MkKernelDev(8, 1), MkKernelDev(8, 0)}, 0},
		{"no block device (tmpfs)", MkKernelDev(0, 42), nil, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := &Policy{Rules: []Rule{{ID: 7}}}
			r := rawDisks(sysfs, p, map[uint32]FileSet{7: {{Dev: c.dev, Ino: 1}: "/k.pem"}}, st)
			for _, d := range c.wantDevs {
				if r.Devs[uint32(d)] != 7 {
					t.Errorf("device %d:%d missing: %v", d>>20, d&(1<<20-1), r.Devs)
				}
			}
			if c.wantImages == 1 && r.Images[img.ID] != 7 {
				t.Errorf("loop image missing: %v", r.Images)
			}
			if len(r.Images) != c.wantImages {
				t.Errorf("images %v, want %d", r.Images, c.wantImages)
			}
		})
	}
}
