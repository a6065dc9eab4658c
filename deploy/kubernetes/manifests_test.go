// Tests for keyguard's Kubernetes manifests without a cluster: the Helm chart (deploy/helm/keyguard) is
// linted and rendered with Helm as a Go module, exactly as `helm lint` and `helm template` do, for
// default and non-default values; every rendered object and the plain daemonset.yaml are decoded
// strictly into the Kubernetes API types (unknown, misspelled or wrongly cased fields and duplicate
// keys fail, as with the API server's strict field validation); then the security-relevant facts and
// a few API-server validation rules that decoding cannot see are checked.
package kubernetes_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	sigsjson "sigs.k8s.io/json"

	"github.com/keyguard/keyguard/deploy/oci"
	"sigs.k8s.io/yaml"
)

// The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
var kubeVersions = []string{"v1.30.0", "v1.37.0"}

func here(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

func chartDir(t *testing.T) string { return filepath.Join(here(t), "..", "helm", "keyguard") }

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir(t))
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return c
}

// render is `helm template RELEASE deploy/helm/keyguard -n NAMESPACE --kube-version V -f values`:
// schema validation, the kubeVersion constraint, templates, NOTES. An empty kubeVersion is no
// --kube-version: Helm's default capabilities.
func render(t *testing.T, c *chart.Chart, release, namespace, kubeVersion string, values map[string]any) (string, error) {
	t.Helper()
	cfg := &action.Configuration{Log: func(string, ...any) {}}
	install := action.NewInstall(cfg)
	install.DryRun = true
	install.DryRunOption = "client"
	install.ClientOnly = true
	install.Replace = true
	install.ReleaseName = release
	install.Namespace = namespace
	if kubeVersion != "" {
		kv, err := chartutil.ParseKubeVersion(kubeVersion)
		if err != nil {
			t.Fatal(err)
		}
		install.KubeVersion = kv
	}
	rel, err := install.RunWithContext(context.Background(), c, values)
	if err != nil {
		return "", err
	}
	return rel.Manifest, nil
}

// object is one decoded manifest.
type object struct {
	kind, name string
	obj        any
}

// decodeStrict decodes one YAML document into the API type for its kind. Like the API server's
// strict field validation (sigs.k8s.io/json, case-sensitive): unknown fields, fields in the wrong
// case and duplicate keys are errors, and so is a kind this deployment does not use.
func decodeStrict(doc []byte) (object, error) {
	j, err := yaml.YAMLToJSONStrict(doc) // duplicate keys
	if err != nil {
		return object{}, fmt.Errorf("yaml: %w", err)
	}
	var tm metav1.TypeMeta
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(j, &tm); err != nil {
		return object{}, err
	}
	var obj any
	switch tm.APIVersion + "/" + tm.Kind {
	case "v1/Namespace":
		obj = &corev1.Namespace{}
	case "v1/ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "v1/ConfigMap":
		obj = &corev1.ConfigMap{}
	case "v1/Service":
		obj = &corev1.Service{}
	case "v1/PersistentVolumeClaim":
		obj = &corev1.PersistentVolumeClaim{}
	case "apps/v1/DaemonSet":
		obj = &appsv1.DaemonSet{}
	case "apps/v1/Deployment":
		obj = &appsv1.Deployment{}
	default:
		return object{}, fmt.Errorf("unexpected apiVersion/kind %q/%q", tm.APIVersion, tm.Kind)
	}
	strictErrs, err := sigsjson.UnmarshalStrict(j, obj)
	if err != nil {
		return object{}, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	if len(strictErrs) > 0 {
		return object{}, fmt.Errorf("%s: strict decoding: %v", tm.Kind, strictErrs)
	}
	name := obj.(metav1.Object).GetName()
	if name == "" {
		return object{}, fmt.Errorf("%s without metadata.name", tm.Kind)
	}
	return object{kind: tm.Kind, name: name, obj: obj}, nil
}

// decodeAll splits a multi-document manifest and decodes every document strictly.
func decodeAll(t *testing.T, manifest string) []object {
	t.Helper()
	var objs []object
	docs := releaseutil.SplitManifests(manifest) // a map: order by document position
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	sort.Sort(releaseutil.BySplitManifestsOrder(keys))
	for _, k := range keys {
		doc := docs[k]
		if strings.TrimSpace(doc) == "" {
			continue
		}
		o, err := decodeStrict([]byte(doc))
		if err != nil {
			t.Fatalf("%v\n--- document ---\n%s", err, doc)
		}
		objs = append(objs, o)
	}
	if len(objs) == 0 {
		t.Fatal("no objects rendered")
	}
	return objs
}

func find[T any](objs []object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// reporter is the part of *testing.T the fact checks use, so a test can collect what they report.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// collected records what a check reported.
type collected struct{ msgs []string }

func (c *collected) Helper() {}
func (c *collected) Errorf(format string, args ...any) {
	c.msgs = append(c.msgs, fmt.Sprintf(format, args...))
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkPod checks what strict decoding cannot: references inside the pod spec and API-server
// validation rules that concern privileges, and that every container has resource limits.
func checkPod(t reporter, what string, meta metav1.ObjectMeta, sel *metav1.LabelSelector, spec corev1.PodSpec, configMaps map[string]bool) {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() || !s.Matches(labels.Set(meta.Labels)) {
		t.Errorf("%s: selector %v does not match the pod labels %v (%v)", what, sel, meta.Labels, err)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: service account token mounted; keyguard never talks to the Kubernetes API", what)
	}
	if spec.HostNetwork || spec.HostIPC {
		t.Errorf("%s: hostNetwork/hostIPC set; not needed", what)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		if _, dup := volumes[v.Name]; dup {
			t.Errorf("%s: duplicate volume %q", what, v.Name)
		}
		volumes[v.Name] = v
		if v.ConfigMap != nil && configMaps != nil && !configMaps[v.ConfigMap.Name] {
			t.Errorf("%s: volume %q uses ConfigMap %q, which is not rendered", what, v.Name, v.ConfigMap.Name)
		}
	}
	used := map[string]bool{}
	names := map[string]bool{}
	all := append(slices.Clone(spec.InitContainers), spec.Containers...)
	for _, c := range all {
		if names[c.Name] {
			t.Errorf("%s: duplicate container %q", what, c.Name)
		}
		names[c.Name] = true
		for _, m := range c.VolumeMounts {
			if _, ok := volumes[m.Name]; !ok {
				t.Errorf("%s/%s: mount of undefined volume %q", what, c.Name, m.Name)
			}
			used[m.Name] = true
			privileged := c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged
			if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional && !privileged {
				t.Errorf("%s/%s: Bidirectional propagation on %s needs a privileged container (the API server refuses it)", what, c.Name, m.MountPath)
			}
		}
		env := map[string]bool{}
		for _, e := range c.Env {
			env[e.Name] = true
		}
		for _, a := range append(slices.Clone(c.Command), c.Args...) {
			for _, m := range envRef.FindAllStringSubmatch(a, -1) {
				if !env[m[1]] {
					t.Errorf("%s/%s: argument %q refers to $(%s), which is not in env (Kubernetes would pass it literally)", what, c.Name, a, m[1])
				}
			}
		}
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s/%s: root file system not read-only", what, c.Name)
		}
		if sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
			if sc.Privileged != nil && *sc.Privileged {
				t.Errorf("%s/%s: allowPrivilegeEscalation=false with privileged (the API server refuses it)", what, c.Name)
			}
			if sc.Capabilities != nil && slices.Contains(sc.Capabilities.Add, "SYS_ADMIN") {
				t.Errorf("%s/%s: allowPrivilegeEscalation=false with CAP_SYS_ADMIN (the API server refuses it)", what, c.Name)
			}
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			lim, ok := c.Resources.Limits[r]
			if !ok || lim.IsZero() {
				t.Errorf("%s/%s: no %s limit", what, c.Name, r)
			}
			if req, ok := c.Resources.Requests[r]; ok && req.Cmp(lim) > 0 {
				t.Errorf("%s/%s: %s request %s above limit %s", what, c.Name, r, req.String(), lim.String())
			}
		}
	}
	for name := range volumes {
		if !used[name] {
			t.Errorf("%s: volume %q is mounted by no container", what, name)
		}
	}
}

// agentFacts are the agent's security-relevant facts, for the chart and the plain manifest.
func agentFacts(t reporter, ds *appsv1.DaemonSet, privileged bool) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostPID {
		t.Errorf("agent: hostPID false; the agent must see the node's processes")
	}
	if len(spec.Containers) != 1 || spec.Containers[0].Name != "agent" {
		t.Errorf("agent: containers %v", spec.Containers)
		return
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("agent: not root")
	}
	// Probes ask the agent on its control socket, as `keyguard status` does (TestProbeCommand runs it).
	for what, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.Exec == nil || !slices.Equal(p.Exec.Command, agentProbe) {
			t.Errorf("agent: %s probe %+v, want exec %v", what, p, agentProbe)
		}
	}
	if !strings.Contains(strings.Join(c.Args, " "), "-host-name $(NODE_NAME)") {
		t.Errorf("agent: operator tokens must name the node: no -host-name $(NODE_NAME) in %v", c.Args)
	}
	if privileged {
		if sc.Privileged == nil || !*sc.Privileged {
			t.Errorf("agent: privileged requested but not set")
		}
	} else {
		if sc.Privileged == nil || *sc.Privileged {
			t.Errorf("agent: privileged without being asked")
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("agent: capabilities not dropped: %+v", sc.Capabilities)
		}
		want := []corev1.Capability{"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Add, want) {
			t.Errorf("agent: capabilities added %v, want exactly %v", sc.Capabilities.Add, want)
		}
	}
	if sp := spec.SecurityContext; sp == nil || sp.SeccompProfile == nil || sp.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("agent: seccomp profile is not RuntimeDefault")
	}
	// hostPath volumes: exactly these, each mounted at the node's own path.
	wantHost := map[string]bool{"/sys/fs/bpf": false, "/sys/kernel/security": true, "/sys/fs/cgroup": true,
		"/run/keyguard": false, "/var/lib/keyguard": false, "/var/log/keyguard": false} // path -> read-only
	hostVol := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			if _, ok := wantHost[v.HostPath.Path]; !ok {
				t.Errorf("agent: unexpected hostPath %s", v.HostPath.Path)
			}
			hostVol[v.Name] = v.HostPath.Path
		}
	}
	if len(hostVol) != len(wantHost) {
		t.Errorf("agent: hostPath volumes %v, want %v", hostVol, wantHost)
	}
	var bpffs bool
	for _, m := range c.VolumeMounts {
		p, ok := hostVol[m.Name]
		if !ok {
			continue
		}
		if m.MountPath != p {
			t.Errorf("agent: hostPath %s mounted at %s; the kernel-run dump handler needs the node's path", p, m.MountPath)
		}
		if m.ReadOnly != wantHost[p] {
			t.Errorf("agent: hostPath %s readOnly=%v", p, m.ReadOnly)
		}
		if p == "/sys/fs/bpf" {
			bpffs = true
			if m.MountPropagation == nil || (*m.MountPropagation != corev1.MountPropagationHostToContainer &&
				*m.MountPropagation != corev1.MountPropagationBidirectional) {
				t.Errorf("agent: bpffs mounted without propagation from the node")
			}
		}
	}
	if !bpffs {
		t.Errorf("agent: /sys/fs/bpf not mounted")
	}
	if c.Command[0] != "/var/lib/keyguard/bin/keyguard-agent" {
		t.Errorf("agent: runs %s, not the executable installed on the node", c.Command[0])
	}
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"run", "-policy /etc/keyguard/policy.yaml", "-pin-path /sys/fs/bpf/keyguard", "-state-dir /var/lib/keyguard"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %q", args, want)
		}
	}
}

func collectorFacts(t reporter, d *appsv1.Deployment) {
	t.Helper()
	spec := d.Spec.Template.Spec
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("collector: pod may run as root")
	}
	if spec.HostPID {
		t.Errorf("collector: hostPID")
	}
	for _, c := range spec.Containers {
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("collector/%s: privilege escalation allowed", c.Name)
		}
		if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			t.Errorf("collector/%s: capabilities %+v", c.Name, sc.Capabilities)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("collector/%s: privileged", c.Name)
		}
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			t.Errorf("collector: hostPath %s", v.HostPath.Path)
		}
	}
}

func lintChart(t *testing.T, values map[string]any) {
	t.Helper()
	kv, _ := chartutil.ParseKubeVersion(kubeVersions[0])
	res := lint.AllWithKubeVersion(chartDir(t), values, "keyguard", kv)
	for _, m := range res.Messages {
		if m.Severity >= support.WarningSev {
			t.Errorf("helm lint: %s", m.Error())
		} else {
			t.Logf("helm lint: %s", m.Error())
		}
	}
}

// values parses a YAML values document (what `-f file.yaml` gives helm).
// testOperatorKey is a throwaway operator public key for rendering (the chart requires one).
const testOperatorKey = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA/8jSHqr4D+8eAXi3phhWbwhhEeL3W/j5T39JrQxJBGk=\n-----END PUBLIC KEY-----\n"

// values parses doc and adds the operator key unless doc sets one.
func values(t *testing.T, doc string) map[string]any {
	t.Helper()
	v := rawValues(t, doc)
	agent, _ := v["agent"].(map[string]any)
	if agent == nil {
		agent = map[string]any{}
		v["agent"] = agent
	}
	if _, ok := agent["operatorPublicKey"]; !ok {
		agent["operatorPublicKey"] = testOperatorKey
	}
	return v
}

func rawValues(t *testing.T, doc string) map[string]any {
	t.Helper()
	v, err := chartutil.ReadValues([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestChart(t *testing.T) {
	c := loadChart(t)
	tests := []struct {
		name       string
		values     string
		privileged bool
		kinds      []string // kinds rendered, sorted
		check      func(t *testing.T, objs []object)
	}{
		{
			name:   "policy token",
			values: "agent: {policyToken: kgt1.abc.def}\ncollector: {enabled: false}\n",
			kinds:  []string{"ConfigMap", "DaemonSet", "ServiceAccount"},
			check: func(t *testing.T, objs []object) {
				if got := find[*corev1.ConfigMap](objs)[0].Data["policy.yaml.token"]; got != "kgt1.abc.def" {
					t.Errorf("policy.yaml.token = %q", got)
				}
			},
		},
		{
			name:  "defaults",
			kinds: []string{"ConfigMap", "DaemonSet", "Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount", "ServiceAccount"},
			check: func(t *testing.T, objs []object) {
				ds := find[*appsv1.DaemonSet](objs)[0]
				args := strings.Join(ds.Spec.Template.Spec.Containers[0].Args, " ")
				// No per-node certificate: the node enrolls as its name with the pool's bootstrap token
				// and keeps its identity on the node.
				for _, want := range []string{"-collector kg-collector.security.svc:7443", "-host-name $(NODE_NAME)",
					"-cert /var/lib/keyguard/tls/agent.pem -key /var/lib/keyguard/tls/agent-key.pem",
					"-enroll-url https://kg-collector.security.svc:7444", "-enroll-token-file /etc/keyguard/tls/bootstrap.token"} {
					if !strings.Contains(args, want) {
						t.Errorf("agent args %q lack %q", args, want)
					}
				}
				cc := find[*appsv1.Deployment](objs)[0].Spec.Template.Spec.Containers[0]
				cargs := strings.Join(cc.Args, " ")
				for _, want := range []string{"-revoked-serials /var/lib/keyguard-collector/revoked.txt", "-enroll-listen 0.0.0.0:7444",
					"-enroll-ca-dir /etc/keyguard/enroll", "-enroll-token-key /etc/keyguard/enroll/token.key"} {
					if !strings.Contains(cargs, want) {
						t.Errorf("collector args %q lack %q", cargs, want)
					}
				}
				if p := find[*corev1.Service](objs)[0].Spec.Ports; len(p) != 2 || p[1].Name != "enroll" || p[1].Port != 7444 || p[1].TargetPort.StrVal != "enroll" {
					t.Errorf("collector Service ports %+v, want grpc and enroll 7444", p)
				}
				cm := find[*corev1.ConfigMap](objs)[0]
				if strings.TrimSpace(cm.Data["operator.pub"]) != strings.TrimSpace(testOperatorKey) {
					t.Errorf("operator.pub in the agent's ConfigMap = %q, want the operator key", cm.Data["operator.pub"])
				}
				if _, ok := cm.Data["policy.yaml.token"]; ok {
					t.Error("policy.yaml.token rendered without agent.policyToken")
				}
				d := find[*appsv1.Deployment](objs)[0]
				if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || *d.Spec.Replicas != 1 {
					t.Error("SQLite collector must be one replica, Recreate")
				}
				pvc := find[*corev1.PersistentVolumeClaim](objs)[0]
				if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(resource.MustParse("10Gi")) != 0 {
					t.Errorf("PVC size %s", got.String())
				}
				svc := find[*corev1.Service](objs)[0]
				if svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.Ports[0].TargetPort.StrVal != "grpc" {
					t.Errorf("service %+v", svc.Spec)
				}
				if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
					t.Error("service selects no collector pod")
				}
			},
		},
		{
			name: "privileged agent, external collector, PostgreSQL, 3 collectors",
			values: `
agent:
  privileged: true
  collector: {address: "collector.example.net:7443"}
  enroll: {url: "https://collector.example.net:7444"}
  extraArgs: ["-report-noaudit", "-dump-keep-stacks"]
  image: {repository: registry.example.net/keyguard-agent, tag: "1.2.3", pullPolicy: Always}
  priorityClassName: ""
  tolerations: []
collector:
  replicas: 3
  database: {dsnSecret: {name: keyguard-db, key: url}}
  chainKeySecret: keyguard-chain
  tls: {secretName: my-collector-tls, revocationConfigMap: keyguard-revoked}
  enroll: {enabled: false}
  retention: 2160h
  service: {type: LoadBalancer, port: 443}
  resources: {requests: {cpu: 500m, memory: 512Mi}, limits: {cpu: "4", memory: 4Gi}}
`,
			privileged: true,
			kinds:      []string{"ConfigMap", "DaemonSet", "Deployment", "Service", "ServiceAccount", "ServiceAccount"},
			check: func(t *testing.T, objs []object) {
				ds := find[*appsv1.DaemonSet](objs)[0]
				c := ds.Spec.Template.Spec.Containers[0]
				args := strings.Join(c.Args, " ")
				if !strings.Contains(args, "-collector collector.example.net:7443") || !strings.HasSuffix(args, "-report-noaudit -dump-keep-stacks") ||
					!strings.Contains(args, "-enroll-url https://collector.example.net:7444") {
					t.Errorf("agent args %s", args)
				}
				if c.Image != "registry.example.net/keyguard-agent:1.2.3" || c.ImagePullPolicy != corev1.PullAlways {
					t.Errorf("agent image %s %s", c.Image, c.ImagePullPolicy)
				}
				if ds.Spec.Template.Spec.PriorityClassName != "" || len(ds.Spec.Template.Spec.Tolerations) != 0 {
					t.Error("priorityClassName/tolerations not overridable")
				}
				d := find[*appsv1.Deployment](objs)[0]
				cc := d.Spec.Template.Spec.Containers[0]
				cargs := strings.Join(cc.Args, " ")
				for _, want := range []string{"-db $(KEYGUARD_DB_DSN)", "-chain-key-file /etc/keyguard/chain/chain.key",
					"-revoked-serials /etc/keyguard/revocation/revoked.txt", "-retention 2160h"} {
					if !strings.Contains(cargs, want) {
						t.Errorf("collector args %q lack %q", cargs, want)
					}
				}
				if *d.Spec.Replicas != 3 || d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
					t.Error("PostgreSQL collectors: 3 replicas, rolling update")
				}
				if cc.Env[0].ValueFrom.SecretKeyRef.Name != "keyguard-db" || cc.Env[0].ValueFrom.SecretKeyRef.Key != "url" {
					t.Errorf("DSN env %+v", cc.Env)
				}
				if got := cc.Resources.Limits[corev1.ResourceMemory]; got.Cmp(resource.MustParse("4Gi")) != 0 {
					t.Errorf("collector memory limit %s", got.String())
				}
				svc := find[*corev1.Service](objs)[0]
				if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Spec.Ports[0].Port != 443 {
					t.Errorf("service %+v", svc.Spec)
				}
			},
		},
		{
			name:   "agent only, no collector",
			values: "collector: {enabled: false}\n",
			kinds:  []string{"ConfigMap", "DaemonSet", "ServiceAccount"},
			check: func(t *testing.T, objs []object) {
				c := find[*appsv1.DaemonSet](objs)[0].Spec.Template.Spec.Containers[0]
				if args := strings.Join(c.Args, " "); strings.Contains(args, "-collector") || strings.Contains(args, "tls") || strings.Contains(args, "-metrics") {
					t.Errorf("agent without collector still configured for one: %s", args)
				}
			},
		},
		{
			name:   "metrics on",
			values: "agent: {metrics: {enabled: true}}\ncollector: {metrics: {enabled: true, port: 9100}}\n",
			kinds:  []string{"ConfigMap", "DaemonSet", "Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount", "ServiceAccount"},
			check: func(t *testing.T, objs []object) {
				for _, c := range []struct {
					name string
					pod  corev1.PodSpec
					port int32
				}{
					{"agent", find[*appsv1.DaemonSet](objs)[0].Spec.Template.Spec, 9464},
					{"collector", find[*appsv1.Deployment](objs)[0].Spec.Template.Spec, 9100},
				} {
					ctr := c.pod.Containers[0]
					args := strings.Join(ctr.Args, " ")
					if want := fmt.Sprintf("-metrics-listen 0.0.0.0:%d -metrics-allow-remote", c.port); !strings.Contains(args, want) {
						t.Errorf("%s args %q lack %q", c.name, args, want)
					}
					found := false
					for _, p := range ctr.Ports {
						found = found || (p.Name == "metrics" && p.ContainerPort == c.port)
					}
					if !found {
						t.Errorf("%s has no container port metrics/%d: %+v", c.name, c.port, ctr.Ports)
					}
				}
			},
		},
		{
			name:   "collector only",
			values: "agent: {enabled: false}\n",
			kinds:  []string{"Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount"},
		},
	}
	for _, tt := range tests {
		for _, kv := range kubeVersions {
			t.Run(tt.name+"/"+kv, func(t *testing.T) {
				vals := values(t, tt.values)
				if kv == kubeVersions[0] {
					lintChart(t, vals)
				}
				manifest, err := render(t, c, "kg", "security", kv, vals)
				if err != nil {
					t.Fatalf("render: %v", err)
				}
				objs := decodeAll(t, manifest)
				var kinds []string
				configMaps := map[string]bool{}
				for _, o := range objs {
					kinds = append(kinds, o.kind)
					if o.kind == "ConfigMap" {
						configMaps[o.name] = true
					}
					if ns := o.obj.(metav1.Object).GetNamespace(); ns != "security" {
						t.Errorf("%s %s in namespace %q", o.kind, o.name, ns)
					}
				}
				slices.Sort(kinds)
				if !slices.Equal(kinds, tt.kinds) {
					t.Errorf("rendered kinds %v, want %v", kinds, tt.kinds)
				}
				for _, ds := range find[*appsv1.DaemonSet](objs) {
					checkPod(t, "agent", ds.Spec.Template.ObjectMeta, ds.Spec.Selector, ds.Spec.Template.Spec, configMaps)
					agentFacts(t, ds, tt.privileged)
				}
				for _, d := range find[*appsv1.Deployment](objs) {
					checkPod(t, "collector", d.Spec.Template.ObjectMeta, d.Spec.Selector, d.Spec.Template.Spec, nil)
					collectorFacts(t, d)
				}
				if tt.check != nil {
					tt.check(t, objs)
				}
			})
		}
	}
}

// TestChartRejects shows that bad input fails: misspelled values (values.schema.json), an impossible
// combination (the template's own check), and a kube version below the chart's.
func TestChartRejects(t *testing.T) {
	c := loadChart(t)
	tests := []struct {
		name, values, kubeVersion, want string
	}{
		{"misspelled value", "agent: {privilegd: true}\n", "v1.37.0", "privilegd"},
		{"misspelled nested value", "collector: {persistence: {sise: 1Gi}}\n", "v1.37.0", "sise"},
		{"wrong type", "collector: {replicas: two}\n", "v1.37.0", "replicas"},
		{"bad collector address", "agent: {collector: {address: collector.example.net}}\n", "v1.37.0", "address"},
		{"SQLite with 2 replicas", "collector: {replicas: 2}\n", "v1.37.0", "needs PostgreSQL"},
		{"old Kubernetes", "", "v1.29.9", "kubeVersion"},
		{"no operator key", "agent: {operatorPublicKey: \"\"}\n", "v1.37.0", "operatorPublicKey"},
		{"external collector, no enrollment URL", "collector: {enabled: false}\nagent: {collector: {address: c.example.net:7443}}\n", "v1.37.0", "agent.enroll.url"},
		{"collector without enrollment, no enrollment URL", "collector: {enroll: {enabled: false}}\n", "v1.37.0", "agent.enroll.url"},
		{"enrollment URL not https", "agent: {enroll: {url: \"http://c.example.net:7444\"}}\n", "v1.37.0", "url"},
		{"enrollment with a revocation ConfigMap", "collector: {tls: {secretName: t, revocationConfigMap: r}}\n", "v1.37.0", "revocationConfigMap"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := render(t, c, "kg", "security", tt.kubeVersion, values(t, tt.values))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("render error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

// TestTemplateWithoutKubeVersion: `helm template` without --kube-version checks Chart.yaml's
// kubeVersion against the Kubernetes version Helm was linked with. Helm's release builds set it at link
// time from their k8s.io/client-go (Makefile: -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=...), so
// the chart renders with Helm ≥ 3.15 (client-go 0.30); a Helm linked without it (a Go-library build, as
// this test's) says 1.20 and the chart refuses it by name. The release build is reproduced here by
// setting the default capabilities from the client-go that Helm's go.mod requires, as that Makefile does.
func TestTemplateWithoutKubeVersion(t *testing.T) {
	c := loadChart(t)
	saved := chartutil.DefaultCapabilities
	t.Cleanup(func() { chartutil.DefaultCapabilities = saved })
	if _, err := render(t, c, "kg", "security", "", values(t, "")); err == nil ||
		!strings.Contains(err.Error(), "kubeVersion") || !strings.Contains(err.Error(), "v1.20.0") {
		t.Errorf("Helm linked without a Kubernetes version (1.20): %v, want a kubeVersion refusal", err)
	}
	// Helm's Makefile: K8S_MODULES_VER from `go list -m k8s.io/client-go` in Helm's own module.
	out, err := exec.Command("go", "list", "-m", "-f", "{{.GoMod}}", "helm.sh/helm/v3").Output()
	if err != nil {
		t.Fatalf("go list helm.sh/helm/v3: %v", err)
	}
	gomod, err := os.ReadFile(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*k8s\.io/client-go v0\.(\d+)\.`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("Helm's go.mod requires no k8s.io/client-go")
	}
	minor := string(m[1])
	caps := saved.Copy()
	caps.KubeVersion = chartutil.KubeVersion{Version: "v1." + minor + ".0", Major: "1", Minor: minor}
	chartutil.DefaultCapabilities = caps
	manifest, err := render(t, c, "kg", "security", "", values(t, ""))
	if err != nil {
		t.Fatalf("helm template without --kube-version, Helm linked with client-go 0.%s: %v", minor, err)
	}
	if !strings.Contains(manifest, "appArmorProfile") {
		t.Error("rendered without the appArmorProfile that needs 1.30")
	}
}

// TestStrictDecodingBites shows that the decoder used above refuses what the API server's strict
// field validation refuses, on a real rendered DaemonSet.
func TestStrictDecodingBites(t *testing.T) {
	manifest, err := render(t, loadChart(t), "kg", "security", kubeVersions[1], values(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	var dsDoc string
	for _, doc := range releaseutil.SplitManifests(manifest) {
		if strings.Contains(doc, "kind: DaemonSet") {
			dsDoc = doc
		}
	}
	if _, err := decodeStrict([]byte(dsDoc)); err != nil {
		t.Fatalf("unedited DaemonSet: %v", err)
	}
	tests := []struct{ name, old, new string }{
		{"misspelled field", "mountPropagation: HostToContainer", "mountPropogation: HostToContainer"},
		{"wrong case", "hostPID: true", "hostPid: true"}, // encoding/json alone would accept this
		{"field at the wrong level", "      hostPID: true", "      hostPID: true\n      readOnlyRootFilesystem: true"},
		{"duplicate key", "      hostPID: true", "      hostPID: true\n      hostPID: false"},
		{"wrong type", "hostPID: true", "hostPID: \"yes\""},
		{"bad quantity", "memory: 512Mi", "memory: 512MB-ish"},
		{"unknown kind", "kind: DaemonSet", "kind: DaemonSett"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			edited := strings.Replace(dsDoc, tt.old, tt.new, 1)
			if edited == dsDoc {
				t.Fatalf("edit %q did not apply", tt.old)
			}
			_, err := decodeStrict([]byte(edited))
			if err == nil {
				t.Fatalf("accepted a DaemonSet with a %s", tt.name)
			}
			t.Logf("rejected: %v", err)
		})
	}
}

// TestPlainDaemonSet decodes deploy/kubernetes/daemonset.yaml strictly, checks the same facts, and
// checks that it is the chart's agent (release "keyguard", namespace "keyguard", no collector in the
// cluster), so the two cannot drift apart.
func TestPlainDaemonSet(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(here(t), "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	plain := decodeAll(t, string(b))
	var kinds []string
	configMaps := map[string]bool{}
	for _, o := range plain {
		kinds = append(kinds, o.kind)
		if o.kind == "ConfigMap" {
			configMaps[o.name] = true
		}
		if ns, ok := o.obj.(*corev1.Namespace); ok {
			if ns.Name != "keyguard" {
				t.Errorf("namespace %s", ns.Name)
			}
		} else if got := o.obj.(metav1.Object).GetNamespace(); got != "keyguard" {
			t.Errorf("%s %s in namespace %q", o.kind, o.name, got)
		}
	}
	if want := []string{"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"}; !slices.Equal(kinds, want) {
		t.Fatalf("daemonset.yaml holds %v, want %v", kinds, want)
	}
	ds := find[*appsv1.DaemonSet](plain)[0]
	checkPod(t, "agent", ds.Spec.Template.ObjectMeta, ds.Spec.Selector, ds.Spec.Template.Spec, configMaps)
	agentFacts(t, ds, false)

	manifest, err := render(t, loadChart(t), "keyguard", "keyguard", kubeVersions[1],
		values(t, "collector: {enabled: false}\nagent: {collector: {address: \"keyguard-collector.keyguard.svc:7443\"}, enroll: {url: \"https://keyguard-collector.keyguard.svc:7444\"}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	charted := decodeAll(t, manifest)
	cds := find[*appsv1.DaemonSet](charted)[0]
	if !equality.Semantic.DeepEqual(ds.Spec, cds.Spec) {
		pj, _ := yaml.Marshal(ds.Spec)
		cj, _ := yaml.Marshal(cds.Spec)
		t.Errorf("daemonset.yaml's DaemonSet spec differs from the chart's; re-render it:\n--- daemonset.yaml\n%s\n--- chart\n%s", pj, cj)
	}
	// Same policy; the plain file carries a placeholder where the chart has the operator's key.
	pcm, ccm := find[*corev1.ConfigMap](plain)[0], find[*corev1.ConfigMap](charted)[0]
	if pcm.Data["policy.yaml"] != ccm.Data["policy.yaml"] || pcm.Name != ccm.Name || len(pcm.Data) != len(ccm.Data) {
		t.Errorf("policy ConfigMap differs from the chart's: %v vs %v", pcm.Data, ccm.Data)
	}
	if !strings.HasPrefix(pcm.Data["operator.pub"], "REPLACE WITH") {
		t.Errorf("daemonset.yaml's operator.pub is not the placeholder: %q", pcm.Data["operator.pub"])
	}
}

// TestFactChecksBite shows that each security fact checked above fails when the manifest breaks it.
func TestFactChecksBite(t *testing.T) {
	manifest, err := render(t, loadChart(t), "kg", "security", kubeVersions[1], values(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	objs := decodeAll(t, manifest)
	bidirectional := corev1.MountPropagationBidirectional
	agentTests := []struct {
		name, want string
		edit       func(ds *appsv1.DaemonSet)
	}{
		{"no hostPID", "hostPID false", func(ds *appsv1.DaemonSet) { ds.Spec.Template.Spec.HostPID = false }},
		{"hostNetwork", "hostNetwork", func(ds *appsv1.DaemonSet) { ds.Spec.Template.Spec.HostNetwork = true }},
		{"extra capability", "capabilities added", func(ds *appsv1.DaemonSet) {
			c := ds.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities
			c.Add = append(c.Add, "NET_ADMIN")
		}},
		{"host root mounted", "unexpected hostPath /", func(ds *appsv1.DaemonSet) {
			s := &ds.Spec.Template.Spec
			s.Volumes = append(s.Volumes, corev1.Volume{Name: "root", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}})
			s.Containers[0].VolumeMounts = append(s.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "root", MountPath: "/host"})
		}},
		{"Bidirectional unprivileged", "needs a privileged container", func(ds *appsv1.DaemonSet) {
			ds.Spec.Template.Spec.Containers[0].VolumeMounts[0].MountPropagation = &bidirectional
		}},
		{"no memory limit", "no memory limit", func(ds *appsv1.DaemonSet) {
			delete(ds.Spec.Template.Spec.Containers[0].Resources.Limits, corev1.ResourceMemory)
		}},
		{"undefined env reference", "$(NODE_NAME)", func(ds *appsv1.DaemonSet) { ds.Spec.Template.Spec.Containers[0].Env = nil }},
		{"writable root", "not read-only", func(ds *appsv1.DaemonSet) {
			f := false
			ds.Spec.Template.Spec.Containers[0].SecurityContext.ReadOnlyRootFilesystem = &f
		}},
		{"bpffs elsewhere", "mounted at /bpf", func(ds *appsv1.DaemonSet) { ds.Spec.Template.Spec.Containers[0].VolumeMounts[0].MountPath = "/bpf" }},
		{"selector mismatch", "does not match", func(ds *appsv1.DaemonSet) { ds.Spec.Selector.MatchLabels["extra"] = "x" }},
	}
	for _, tt := range agentTests {
		t.Run("agent/"+tt.name, func(t *testing.T) {
			ds := find[*appsv1.DaemonSet](objs)[0].DeepCopy()
			if ds.Spec.Template.Spec.Containers[0].VolumeMounts[0].MountPath != "/sys/fs/bpf" {
				t.Fatal("first mount is not bpffs; adjust the test")
			}
			tt.edit(ds)
			var c collected
			checkPod(&c, "agent", ds.Spec.Template.ObjectMeta, ds.Spec.Selector, ds.Spec.Template.Spec, nil)
			agentFacts(&c, ds, false)
			if !slices.ContainsFunc(c.msgs, func(m string) bool { return strings.Contains(m, tt.want) }) {
				t.Fatalf("%s not reported; got %q", tt.name, c.msgs)
			}
		})
	}
	collectorTests := []struct {
		name, want string
		edit       func(d *appsv1.Deployment)
	}{
		{"root", "may run as root", func(d *appsv1.Deployment) { d.Spec.Template.Spec.SecurityContext.RunAsUser = new(int64) }},
		{"writable root", "not read-only", func(d *appsv1.Deployment) {
			d.Spec.Template.Spec.Containers[0].SecurityContext.ReadOnlyRootFilesystem = nil
		}},
		{"capability", "capabilities", func(d *appsv1.Deployment) {
			c := d.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities
			c.Add = []corev1.Capability{"NET_BIND_SERVICE"}
		}},
		{"no cpu limit", "no cpu limit", func(d *appsv1.Deployment) {
			delete(d.Spec.Template.Spec.Containers[0].Resources.Limits, corev1.ResourceCPU)
		}},
	}
	for _, tt := range collectorTests {
		t.Run("collector/"+tt.name, func(t *testing.T) {
			d := find[*appsv1.Deployment](objs)[0].DeepCopy()
			tt.edit(d)
			var c collected
			checkPod(&c, "collector", d.Spec.Template.ObjectMeta, d.Spec.Selector, d.Spec.Template.Spec, nil)
			collectorFacts(&c, d)
			if !slices.ContainsFunc(c.msgs, func(m string) bool { return strings.Contains(m, tt.want) }) {
				t.Fatalf("%s not reported; got %q", tt.name, c.msgs)
			}
		})
	}
}

// agentProbe is the agent's probe command: the image's keyguard CLI asks the agent on its socket.
var agentProbe = []string{"/usr/bin/keyguard", "status", "-socket", "/run/keyguard/agent.sock"}

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// buildCLIs builds keyguard and keyguard-agent once for the tests that run the chart's commands.
func buildCLIs(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "keyguard-chart-bin-"); binErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./agent/cmd/keyguard", "./agent/cmd/keyguard-agent")
		cmd.Dir = filepath.Join(here(t), "..", "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

// TestProbeCommand runs the agent's probe command: with no agent it fails as a probe must (exit 1,
// the socket named), not with a usage error.
func TestProbeCommand(t *testing.T) {
	bin := buildCLIs(t)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	out, err := exec.Command(filepath.Join(bin, "keyguard"), append(agentProbe[1:3], sock)...).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), sock) {
		t.Errorf("probe without an agent: %v\n%s", err, out)
	}
}

// TestNotesCommands renders the chart's NOTES and runs the commands they give the operator with the
// real binaries: the token is signed, and the agent's uninstall accepts its flags and the token on
// stdin and fails only because no agent listens on this machine's socket.
func TestNotesCommands(t *testing.T) {
	bin := buildCLIs(t)
	notes := renderNotes(t, "kg", "security", values(t, ""))
	var cmds []string
	for _, l := range strings.Split(notes, "\n") {
		// Commands are the indented lines.
		if strings.HasPrefix(l, "  keyguard") || strings.HasPrefix(l, "  kubectl") {
			l = strings.TrimSpace(l)
			cmds = append(cmds, l)
		}
	}
	if len(cmds) != 2 {
		t.Fatalf("NOTES commands %q, want sign + uninstall:\n%s", cmds, notes)
	}
	dir := t.TempDir()
	if out, err := exec.Command(filepath.Join(bin, "keyguard"), "token", "keygen", "-out", filepath.Join(dir, "operator")).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	fill := strings.NewReplacer("NODE", "node1", "POD", "kg-agent-x1", "NAME", "alice", "TEXT", "decommission")
	run := func(line string) (string, error) {
		cmd := exec.Command("/bin/sh", "-c", fill.Replace(line))
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PATH="+bin+":/usr/bin:/bin")
		out, err := cmd.CombinedOutput()
		t.Logf("$ %s\n%s", fill.Replace(line), out)
		return string(out), err
	}
	if _, err := run(cmds[0]); err != nil {
		t.Fatalf("sign: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "node1.token")); len(b) < 20 {
		t.Fatalf("no token written: %q", b)
	}
	// kubectl -n NS exec -i POD -c agent -- CMD < FILE runs CMD in the pod with FILE on stdin.
	pre, podCmd, ok := strings.Cut(cmds[1], " -- ")
	if !ok || !strings.HasPrefix(pre, "kubectl -n security exec -i POD -c agent") {
		t.Fatalf("uninstall command %q", cmds[1])
	}
	out, err := run(podCmd)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, "agent.sock") {
		t.Errorf("uninstall as the NOTES say: want a failure to reach the agent's socket (exit 1), got %v", err)
	}
}

// renderNotes is `helm install --dry-run`'s NOTES.
func renderNotes(t *testing.T, release, namespace string, vals map[string]any) string {
	t.Helper()
	cfg := &action.Configuration{Log: func(string, ...any) {}}
	install := action.NewInstall(cfg)
	install.DryRun, install.DryRunOption, install.ClientOnly, install.Replace = true, "client", true, true
	install.ReleaseName, install.Namespace = release, namespace
	kv, err := chartutil.ParseKubeVersion(kubeVersions[1])
	if err != nil {
		t.Fatal(err)
	}
	install.KubeVersion = kv
	rel, err := install.RunWithContext(context.Background(), loadChart(t), vals)
	if err != nil {
		t.Fatal(err)
	}
	return rel.Info.Notes
}

// TestImageTag: the chart's appVersion is the package version (kgpackage sets it); the images it runs
// are the tags deploy/oci gives that version, '+' and '~' included.
func TestImageTag(t *testing.T) {
	c := loadChart(t)
	const v = "1.2.3+4.gabc1234~rc1"
	c.Metadata.AppVersion = v
	manifest, err := render(t, c, "kg", "security", kubeVersions[1], values(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	objs := decodeAll(t, manifest)
	want := oci.Ref(oci.Config{Version: v, Repository: "keyguard"}, "keyguard-agent")
	if got := find[*appsv1.DaemonSet](objs)[0].Spec.Template.Spec.Containers[0].Image; got != want {
		t.Errorf("agent image %s, want %s", got, want)
	}
	want = oci.Ref(oci.Config{Version: v, Repository: "keyguard"}, "keyguard-collector")
	if got := find[*appsv1.Deployment](objs)[0].Spec.Template.Spec.Containers[0].Image; got != want {
		t.Errorf("collector image %s, want %s", got, want)
	}
}
