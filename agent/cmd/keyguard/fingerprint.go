package main

import "github.com/keyguard/keyguard/agent/internal/scan"

func init() {
	register("fingerprint", scan.FingerprintSummary, scan.FingerprintCommand)
}
