// Command signer is the demo's sample signing service: it loads an ECDSA private key from a PEM file,
// keeps it in memory, and signs a token every second, like a token-issuing service would.
//
//	signer -key /path/to/key.pem [-log-every 5s]
package main

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	keyPath := flag.String("key", "/etc/signer/signing.pem", "PEM file with the signing key (PKCS#8 or SEC1)")
	logEvery := flag.Duration("log-every", 0, "also print a line about the tokens signed this often (0: only the start line)")
	flag.Parse()
	b, err := os.ReadFile(*keyPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "signer:", err)
		os.Exit(1)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		fmt.Fprintln(os.Stderr, "signer: no PEM block in", *keyPath)
		os.Exit(1)
	}
	var key *ecdsa.PrivateKey
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		key, _ = k.(*ecdsa.PrivateKey)
	} else if key, err = x509.ParseECPrivateKey(blk.Bytes); err != nil {
		fmt.Fprintln(os.Stderr, "signer: not an ECDSA key:", err)
		os.Exit(1)
	}
	fmt.Printf("signer: pid %d holds an ECDSA %s key and signs a token every second\n", os.Getpid(), key.Curve.Params().Name)
	logged := time.Now()
	for n := 1; ; n++ {
		h := sha256.Sum256([]byte(fmt.Sprintf("token %d issued at %s", n, time.Now().Format(time.RFC3339Nano))))
		if _, err := ecdsa.SignASN1(rand.Reader, key, h[:]); err != nil {
			fmt.Fprintln(os.Stderr, "signer: sign:", err)
		}
		if *logEvery > 0 && time.Since(logged) >= *logEvery {
			fmt.Printf("signer: %d tokens signed\n", n)
			logged = time.Now()
		}
		time.Sleep(time.Second)
	}
}
