package main

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/Masterminds/semver/v3"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
)

// packageChart writes the Helm chart as <out>/keyguard-<chart version>.tgz with appVersion = the
// package version, so the chart runs the images built with it (the chart makes the Docker tag as
// deploy/oci does). The chart version is the package version when that is SemVer (1.2.3,
// 1.2.3+4.gabc1234), else 0.0.0-<version with other characters as '-'>.
func packageChart(dir, version, out string) (string, error) {
	c, err := loader.LoadDir(dir)
	if err != nil {
		return "", fmt.Errorf("loading the chart %s: %w", dir, err)
	}
	c.Metadata.AppVersion = version
	c.Metadata.Version = chartVersion(version)
	if err := c.Validate(); err != nil {
		return "", fmt.Errorf("chart with version %s: %w", c.Metadata.Version, err)
	}
	return chartutil.Save(c, out)
}

var notSemver = regexp.MustCompile(`[^0-9A-Za-z.-]`)

func chartVersion(v string) string {
	if _, err := semver.StrictNewVersion(v); err == nil {
		return v
	}
	pre := strings.Trim(notSemver.ReplaceAllString(v, "-"), ".-")
	if _, err := semver.StrictNewVersion("0.0.0-" + pre); err == nil {
		return "0.0.0-" + pre
	}
	return "0.0.0-dev"
}
