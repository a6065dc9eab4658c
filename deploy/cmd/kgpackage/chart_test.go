package main

import (
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
)

func TestPackageChart(t *testing.T) {
	for _, c := range []struct{ version, chart string }{
		{"1.2.3", "1.2.3"},
		{"1.2.3+4.gabc1234", "1.2.3+4.gabc1234"},
		{"1.2.3+4.gabc1234+dirty", "0.0.0-1.2.3-4.gabc1234-dirty"},
		{"0~git20261124161407.20bb454", "0.0.0-0-git20261124161407.20bb454"},
	} {
		path, err := packageChart("../../helm/keyguard", c.version, t.TempDir())
		if err != nil {
			t.Fatalf("%s: %v", c.version, err)
		}
		ch, err := loader.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if ch.Metadata.AppVersion != c.version || ch.Metadata.Version != c.chart {
			t.Errorf("%s: chart %s appVersion %s, want %s and %s", c.version, ch.Metadata.Version, ch.Metadata.AppVersion, c.chart, c.version)
		}
		if len(ch.Templates) == 0 || ch.Schema == nil {
			t.Errorf("%s: packaged chart lacks templates or schema", c.version)
		}
	}
}
