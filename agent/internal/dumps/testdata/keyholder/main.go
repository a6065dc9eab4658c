// Command keyholder is the crashing signer of package dumps' tests: it loads an RSA-2048, an ECDSA
// P-256 and an Ed25519 private key from the PKCS#8 PEM files rsa.pem, p256.pem and ed.pem in the
// directory given as its argument, signs with each from several OS threads, prints
// "READY <pid>" and then waits. A line "crash" on stdin makes it crash from a non-main thread
// (run it with GOTRACEBACK=crash so the Go runtime ends with SIGABRT and the kernel dumps core).
package main

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
)

// Held keeps the keys reachable until the process dies.
var held []crypto.Signer

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: keyholder KEYDIR")
		os.Exit(2)
	}
	lim := syscall.Rlimit{Cur: ^uint64(0), Max: ^uint64(0)}
	_ = syscall.Setrlimit(syscall.RLIMIT_CORE, &lim)
	for _, name := range []string{"rsa.pem", "p256.pem", "ed.pem"} {
		b, err := os.ReadFile(filepath.Join(os.Args[1], name))
		if err != nil {
			fail(err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			fail(fmt.Errorf("%s: no PEM block", name))
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			fail(err)
		}
		switch k := k.(type) {
		case *rsa.PrivateKey:
			held = append(held, k)
		case *ecdsa.PrivateKey:
			held = append(held, k)
		case ed25519.PrivateKey:
			held = append(held, k)
		default:
			fail(fmt.Errorf("%s: unexpected key type %T", name, k))
		}
	}
	const threads = 4
	ready := make(chan int)
	crash := make(chan struct{})
	for i := range threads {
		go func() {
			runtime.LockOSThread()
			sign(held[i%len(held)])
			ready <- syscall.Gettid()
			<-crash
			if i == threads-1 {
				panic("keyholder: crashing on request")
			}
			select {}
		}()
	}
	for range threads {
		<-ready
	}
	for _, k := range held {
		sign(k)
	}
	fmt.Printf("READY %d\n", os.Getpid())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "crash" {
			close(crash)
		}
	}
	select {}
}

func sign(k crypto.Signer) {
	msg := []byte("keyholder signs this")
	var opts crypto.SignerOpts = crypto.SHA256
	digest := sha256.Sum256(msg)
	in := digest[:]
	if _, ok := k.(ed25519.PrivateKey); ok {
		opts, in = crypto.Hash(0), msg
	}
	if _, err := k.Sign(rand.Reader, in, opts); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "keyholder:", err)
	os.Exit(1)
}
