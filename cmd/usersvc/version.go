package main

import "runtime/debug"

// version is stamped in at build time: -ldflags "-X main.version=v1.2.3".
var version string

// buildVersion returns the stamped version, else the module version Go
// recorded, else "devel".
func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
