// Package oci builds keyguard's container images (keyguard-agent, keyguard-collector) as image
// tarballs without a container engine, with go-containerregistry: the static binaries on an empty
// base that holds only /etc/passwd and /etc/group (root and the collector's nonroot user 65532, as
// in distroless), the CA bundle and /tmp. The agent image also carries a static busybox for the
// Helm chart's init container, which copies the agent binary to the node (deploy/README.md).
//
// Images are built for Config.Arch (amd64 by default) and for each of Config.More (arm64): with more
// than one architecture the OCI layout names an image index (multi-arch) with one manifest per
// architecture, which registries and engines resolve to the host's; the docker-archive, which holds a
// single image, is written per architecture (<name>_<version>.image.tar for Arch,
// <name>_<version>_<arch>.image.tar for the others).
//
// Each image is written twice, with the same OCI manifest, config and layers:
//   - <name>_<version>.oci.tar: an OCI image layout (oci-layout, index.json, blobs/) in a tar, the
//     image named by the org.opencontainers.image.ref.name annotation: `skopeo copy oci-archive:`,
//     `podman load`, `docker load` (25+), `ctr images import`, `crane push` (after untar);
//   - <name>_<version>.image.tar: the docker-archive format (manifest.json + config + layers), what
//     go-containerregistry's tarball package writes and reads: `docker load` (any version),
//     `kind load image-archive`.
package oci

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// CollectorUID is the collector's user and group in its image (distroless's "nonroot"); the Helm
// chart runs the collector pod as this uid.
const CollectorUID = 65532

// Config says where the inputs are and what to write.
type Config struct {
	Version    string     // image tag and org.opencontainers.image.version
	Repository string     // e.g. "keyguard" gives keyguard/keyguard-agent:<Version>
	Arch       string     // GOARCH of BinDir and Busybox; "" is amd64
	BinDir     string     // keyguard-agent, keyguard, keyguard-collector (static linux/<Arch>)
	CACerts    string     // CA bundle, e.g. /etc/ssl/certs/ca-certificates.crt
	Busybox    string     // static busybox, e.g. /bin/busybox (Debian busybox-static)
	More       []Platform // further architectures of a multi-arch image (an OCI image index)
	OutDir     string     // where the tarballs go
	MTime      time.Time  // timestamp of every file and of the image (reproducible); zero: now
}

// Platform is one more architecture's inputs: its static binaries and busybox.
type Platform struct {
	Arch    string // GOARCH, e.g. arm64
	BinDir  string
	Busybox string
}

// platforms lists cfg's architectures, Arch first, each as a Config of its own.
func (cfg Config) platforms() []Config {
	if cfg.Arch == "" {
		cfg.Arch = "amd64"
	}
	out := []Config{cfg}
	for _, p := range cfg.More {
		c := cfg
		c.Arch, c.BinDir, c.Busybox, c.More = p.Arch, p.BinDir, p.Busybox, nil
		out = append(out, c)
	}
	return out
}

// Entry is one file system entry of a layer.
type Entry struct {
	Name     string // path without leading slash
	Mode     fs.FileMode
	UID, GID int
	Src      string // regular file: copied from here ...
	Data     []byte // ... or this content
	Link     string // symlink target
	Dir      bool
}

// Image describes one image.
type Image struct {
	Name       string // repository name, e.g. keyguard-agent
	Entrypoint []string
	Cmd        []string
	User       string
	WorkingDir string
	Ports      []string // e.g. 7443/tcp
	Layers     [][]Entry
}

// busyboxApplets are the commands the Helm chart's install-agent init container runs.
var busyboxApplets = []string{"sh", "cmp", "cp", "chmod", "mkdir", "mv"}

const passwd = "root:x:0:0:root:/root:/sbin/nologin\nkeyguard:x:65532:65532:keyguard:/nonexistent:/sbin/nologin\n"
const group = "root:x:0:\nkeyguard:x:65532:\n"

// Images returns the two images for cfg.
func Images(cfg Config) []Image {
	base := []Entry{
		{Name: "etc", Dir: true, Mode: 0o755},
		{Name: "etc/passwd", Mode: 0o644, Data: []byte(passwd)},
		{Name: "etc/group", Mode: 0o644, Data: []byte(group)},
		{Name: "etc/ssl", Dir: true, Mode: 0o755},
		{Name: "etc/ssl/certs", Dir: true, Mode: 0o755},
		{Name: "etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Src: cfg.CACerts},
		{Name: "tmp", Dir: true, Mode: fs.ModeSticky | 0o777},
	}
	bin := func(names ...string) []Entry {
		es := []Entry{{Name: "usr", Dir: true, Mode: 0o755}, {Name: "usr/bin", Dir: true, Mode: 0o755}}
		for _, n := range names {
			es = append(es, Entry{Name: "usr/bin/" + n, Mode: 0o755, Src: filepath.Join(cfg.BinDir, n)})
		}
		return es
	}
	agentBase := append([]Entry{}, base...)
	agentBase = append(agentBase, Entry{Name: "bin", Dir: true, Mode: 0o755}, Entry{Name: "bin/busybox", Mode: 0o755, Src: cfg.Busybox})
	for _, a := range busyboxApplets {
		agentBase = append(agentBase, Entry{Name: "bin/" + a, Link: "busybox"})
	}
	return []Image{
		{
			Name:       "keyguard-agent",
			Entrypoint: []string{"/usr/bin/keyguard-agent"},
			Cmd:        []string{"run"},
			User:       "0:0", // loads BPF programs; the pod grants exactly five capabilities
			Layers:     [][]Entry{agentBase, bin("keyguard-agent", "keyguard")},
		},
		{
			Name:       "keyguard-collector",
			Entrypoint: []string{"/usr/bin/keyguard-collector"},
			Cmd:        []string{"serve"},
			User:       fmt.Sprintf("%d:%d", CollectorUID, CollectorUID),
			WorkingDir: "/tmp",
			Ports:      []string{"7443/tcp"},
			Layers:     [][]Entry{base, bin("keyguard-collector")},
		},
	}
}

// Build writes <OutDir>/<name>_<version>.oci.tar and .image.tar for every image and returns the paths.
func Build(cfg Config) ([]string, error) {
	if cfg.Version == "" || strings.ContainsAny(cfg.Version, " /:") {
		return nil, fmt.Errorf("image version %q: want a non-empty tag without spaces, slashes or colons", cfg.Version)
	}
	if cfg.MTime.IsZero() {
		cfg.MTime = time.Now()
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, err
	}
	var out []string
	plats := cfg.platforms()
	for i, im := range Images(cfg) {
		var imgs []v1.Image
		for _, pc := range plats {
			img, err := build(pc, Images(pc)[i])
			if err != nil {
				return nil, fmt.Errorf("image %s (%s): %w", im.Name, pc.Arch, err)
			}
			imgs = append(imgs, img)
		}
		tag, err := name.NewTag(Ref(cfg, im.Name))
		if err != nil {
			return nil, err
		}
		base := filepath.Join(cfg.OutDir, fmt.Sprintf("%s_%s", im.Name, cfg.Version))
		if err := writeOCIArchive(base+".oci.tar", layoutEntry(plats, imgs), tag, cfg.MTime); err != nil {
			return nil, fmt.Errorf("image %s: OCI layout: %w", im.Name, err)
		}
		out = append(out, base+".oci.tar")
		for j, img := range imgs {
			p := base + ".image.tar"
			if j > 0 {
				p = base + "_" + plats[j].Arch + ".image.tar"
			}
			if err := tarball.WriteToFile(p, tag, img); err != nil {
				return nil, fmt.Errorf("image %s: %w", im.Name, err)
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// layoutEntry is what the OCI layout's index.json names: the image, or with several architectures an
// image index of their manifests, each with its platform.
func layoutEntry(plats []Config, imgs []v1.Image) func(layout.Path, ...layout.Option) error {
	if len(imgs) == 1 {
		return func(lp layout.Path, opts ...layout.Option) error { return lp.AppendImage(imgs[0], opts...) }
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for j, img := range imgs {
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: plats[j].Arch}}})
	}
	return func(lp layout.Path, opts ...layout.Option) error { return lp.AppendIndex(idx, opts...) }
}

// Ref is the image reference an image is tagged with, e.g. keyguard/keyguard-agent:1.2.3.
func Ref(cfg Config, image string) string {
	repo := image
	if cfg.Repository != "" {
		repo = cfg.Repository + "/" + image
	}
	// Docker tags allow [A-Za-z0-9_.-]; Debian-style versions may hold '+' and '~'.
	tag := strings.NewReplacer("+", "_", "~", "-").Replace(cfg.Version)
	return repo + ":" + tag
}

func build(cfg Config, im Image) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, entries := range im.Layers {
		data, err := layerTar(entries, cfg.MTime)
		if err != nil {
			return nil, err
		}
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
			tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: types.OCILayer,
			History: v1.History{Created: v1.Time{Time: cfg.MTime}, CreatedBy: "keyguard deploy/oci"}}); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = cfg.Arch, "linux"
	if cf.Architecture == "" {
		cf.Architecture = "amd64"
	}
	cf.Created = v1.Time{Time: cfg.MTime}
	cf.Config.Entrypoint = im.Entrypoint
	cf.Config.Cmd = im.Cmd
	cf.Config.User = im.User
	cf.Config.WorkingDir = im.WorkingDir
	cf.Config.Env = []string{"PATH=/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   im.Name,
		"org.opencontainers.image.version": cfg.Version,
		"org.opencontainers.image.source":  "https://github.com/keyguard/keyguard",
	}
	if len(im.Ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range im.Ports {
			cf.Config.ExposedPorts[p] = struct{}{}
		}
	}
	return mutate.ConfigFile(img, cf)
}

// layerTar writes entries as an uncompressed tar, in name order, owned by their uid/gid.
func layerTar(entries []Entry, mtime time.Time) ([]byte, error) {
	sorted := append([]Entry{}, entries...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range sorted {
		if e.Name == "" || strings.HasPrefix(e.Name, "/") || path.Clean(e.Name) != e.Name {
			return nil, fmt.Errorf("layer entry %q: want a clean relative path", e.Name)
		}
		h := &tar.Header{Name: e.Name, Mode: int64(e.Mode.Perm()), Uid: e.UID, Gid: e.GID, ModTime: mtime, Format: tar.FormatPAX}
		if e.Mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		var data []byte
		switch {
		case e.Dir:
			h.Typeflag, h.Name = tar.TypeDir, e.Name+"/"
		case e.Link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, e.Link, 0o777
		default:
			h.Typeflag = tar.TypeReg
			data = e.Data
			if e.Src != "" {
				b, err := os.ReadFile(e.Src)
				if err != nil {
					return nil, fmt.Errorf("layer file /%s: %w", e.Name, err)
				}
				data = b
			}
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeOCIArchive writes an OCI image layout whose index.json names what add appends (an image or an
// image index), tagged by annotation, and packs it in a tar with fixed times and modes (reproducible).
func writeOCIArchive(dst string, add func(layout.Path, ...layout.Option) error, tag name.Tag, mtime time.Time) error {
	dir, err := os.MkdirTemp("", "keyguard-oci-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := add(lp, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": tag.TagStr(),
		"io.containerd.image.name":          tag.Name(),
	})); err != nil {
		return err
	}
	var names []string
	if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			names = append(names, p)
		}
		return nil
	}); err != nil {
		return err
	}
	sort.Strings(names)
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	for _, p := range names {
		rel, _ := filepath.Rel(dir, p)
		st, err := os.Stat(p)
		if err != nil {
			f.Close()
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: mtime, Typeflag: tar.TypeReg, Size: st.Size(), Format: tar.FormatPAX}
		if st.IsDir() {
			h.Name, h.Mode, h.Typeflag, h.Size = h.Name+"/", 0o755, tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			f.Close()
			return err
		}
		if !st.IsDir() {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Close()
				return err
			}
			if _, err := tw.Write(b); err != nil {
				f.Close()
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
