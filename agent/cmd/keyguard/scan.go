package main

import "github.com/keyguard/keyguard/agent/internal/scan"

func init() {
	register("scan", scan.CommandSummary, scan.Command)
}
