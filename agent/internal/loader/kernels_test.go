package loader

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/klauspost/compress/zstd"

	kgbpf "github.com/keyguard/keyguard/bpf"
)

// wantVariants are the variants each kernel series of testvm/kernels.txt calls for, read off its BTF
// by hand (kernfs_node members, the bpf_task_from_pid kfunc, bpf_lsm_bpf's parameters, bpf_lsm_file_truncate,
// bpf_lsm_inode_set_acl, process_vm_rw: one BTF entry on each; ima_file_hash and BPF_FUNC_ima_file_hash,
// bpf_get_fsverity_digest). A new series must be
// added here.
var wantVariants = map[string]Variants{
	"6.1": {KernfsParent: "parent", DumpGuard: DumpGuardFentry, ProcOpenGuard: ProcOpenGuardNone,
		TruncateGuard: TruncateGuardPath, ACLGuard: ACLGuardXattr, VMRWEnd: VMRWEndFexit, BPFHookArgs: 3,
		Digest: DigestIMA},
	"6.12": {KernfsParent: "parent", DumpGuard: DumpGuardFentry, ProcOpenGuard: ProcOpenGuardFileOpen,
		TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndCore, BPFHookArgs: 3,
		Digest: DigestIMA, FSVerityKfunc: true},
	"7.3": {KernfsParent: "__parent", DumpGuard: DumpGuardFentry, ProcOpenGuard: ProcOpenGuardFileOpen,
		TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndCore, BPFHookArgs: 4,
		Digest: DigestIMA, FSVerityKfunc: true},
	// arm64 (the stock Debian arm64 kernel, probed with the arm64 object).
	"6.12-arm64": {KernfsParent: "parent", DumpGuard: DumpGuardFentry, ProcOpenGuard: ProcOpenGuardFileOpen,
		TruncateGuard: TruncateGuardFile, ACLGuard: ACLGuardHooks, VMRWEnd: VMRWEndCore, BPFHookArgs: 3,
		Digest: DigestIMA, FSVerityKfunc: true},
}

// Every stock kernel the VM tests boot, probed on the host from its vmlinuz in the testvm cache
// (KEYGUARD_CACHE): nothing keyguard needs is missing, and each variant is the one the series calls for.
func TestVariantsOfPinnedKernels(t *testing.T) {
	cache := os.Getenv("KEYGUARD_CACHE")
	if cache == "" {
		t.Skip("KEYGUARD_CACHE is not set (the testvm cache with the pinned kernels)")
	}
	f, err := os.Open("../../../testvm/kernels.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(strings.SplitN(sc.Text(), "#", 2)[0])
		if len(fields) < 2 {
			continue
		}
		series := fields[0]
		t.Run(series, func(t *testing.T) {
			kernel := btfOfVmlinuz(t, filepath.Join(cache, "kernels", series, "vmlinuz"))
			spec, err := kgbpf.LoadKeyguard()
			if strings.HasSuffix(series, "-arm64") {
				spec, err = ebpf.LoadCollectionSpec("../../../bpf/keyguard_arm64_bpfel.o")
			}
			if err != nil {
				t.Fatal(err)
			}
			// process_vm_rw has seven arguments; 6.1's x86 BPF trampoline takes six (attach refused with
			// EOPNOTSUPP in the VM), which BTF does not show: the agent asks the kernel (tracingProbe).
			// 6.1's duplicate __x64_sys_process_vm_* entries are one symbol each (kallsyms, in the VM).
			v, missing := chooseVariantsWith(spec, kernel, func(fn string) bool { return series != "6.1" || fn != "process_vm_rw" })
			t.Logf("%s: %v", series, v)
			if len(missing) > 0 {
				t.Errorf("the kernel lacks %v", missing)
			}
			want, ok := wantVariants[series]
			if !ok {
				t.Fatalf("no expected variants for series %s: add them to wantVariants", series)
			}
			if v != want {
				t.Errorf("variants %v, want %v", v, want)
			}
		})
	}
}

// btfOfVmlinuz finds the compressed kernel (zstd or xz) inside a bzImage and reads its .BTF section, or
// reads the BTF blob of an uncompressed arm64 Image.
func btfOfVmlinuz(t *testing.T, path string) *btf.Spec {
	t.Helper()
	img, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("kernel not in the cache (run testvm/setup.sh): %v", err)
	}
	if len(img) > 0x40 && string(img[0x38:0x3c]) == "ARM\x64" {
		return btfOfImage(t, img)
	}
	for _, magic := range [][]byte{{0x28, 0xb5, 0x2f, 0xfd}, {0xfd, '7', 'z', 'X', 'Z', 0}} {
		for off := 0; ; off++ {
			i := bytes.Index(img[off:], magic)
			if i < 0 {
				break
			}
			off += i
			if raw := decompress(img[off:], magic[0] == 0x28); raw != nil {
				if e, err := elf.NewFile(bytes.NewReader(raw)); err == nil {
					if s := e.Section(".BTF"); s != nil {
						b, err := s.Data()
						if err != nil {
							t.Fatal(err)
						}
						spec, err := btf.LoadSpecFromReader(bytes.NewReader(b))
						if err != nil {
							t.Fatal(err)
						}
						return spec
					}
				}
			}
		}
	}
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skipf("%s: no zstd kernel inside, and no xz(1) to try xz (apt install xz-utils)", path)
	}
	t.Fatalf("%s: no compressed ELF kernel with BTF inside", path)
	return nil
}

// btfOfImage reads the .BTF blob (header magic 0xeb9f, version 1, 24-byte header) out of an arm64 Image,
// which is the uncompressed kernel without ELF headers.
func btfOfImage(t *testing.T, img []byte) *btf.Spec {
	t.Helper()
	i := bytes.Index(img, []byte{0x9f, 0xeb, 1, 0, 24, 0, 0, 0})
	if i < 0 || len(img) < i+24 {
		t.Fatal("no BTF in the arm64 Image")
	}
	h := img[i : i+24]
	le := binary.LittleEndian
	n := 24 + int(le.Uint32(h[16:])) + int(le.Uint32(h[20:])) // header, then strings end the blob
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(img[i : i+n]))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func decompress(b []byte, isZstd bool) []byte {
	var r io.Reader
	if isZstd {
		d, err := zstd.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil
		}
		defer d.Close()
		r = d
	} else {
		// Kernels compress with xz's x86 BCJ filter, which Go's xz readers lack: use xz(1).
		cmd := exec.Command("xz", "-dcq")
		cmd.Stdin = bytes.NewReader(b)
		out, _ := cmd.Output() // trailing bytes after the stream make xz fail; the kernel is complete
		r = bytes.NewReader(out)
	}
	out, err := io.ReadAll(r)
	if len(out) < 4 || string(out[:4]) != "\x7fELF" {
		return nil
	}
	_ = err // trailing bytes after the stream end the read with an error; the kernel is complete
	return out
}
