package export

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Config configures event export. Collector, SpoolDir and either the three TLS files or
// Plaintext are required; everything else has a default.
type Config struct {
	// Collector is the collector's ingest address, host:port.
	Collector string `yaml:"collector"`
	// CAFile is the PEM bundle of CAs that sign the collector's server certificate.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are this host's own client certificate and key (one per host, never
	// shared; the collector takes the host identity from it). They are re-read when they change,
	// so a renewed certificate is used from the next connection on.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name expected in the collector's certificate. Default: the host part of
	// Collector.
	ServerName string `yaml:"server_name"`
	// Plaintext disables TLS. Only for demos on loopback: the collector address must be a loopback
	// address, and PlaintextHost is sent as the host identity.
	Plaintext     bool   `yaml:"plaintext"`
	PlaintextHost string `yaml:"plaintext_host"`

	// SpoolDir is the spool directory (created 0700).
	SpoolDir string `yaml:"spool_dir"`
	// SpoolMaxBytes caps the spool on disk. Default 256 MiB.
	SpoolMaxBytes int64 `yaml:"spool_max_bytes"`
	// SpoolSegmentBytes is the spool segment size. Default SpoolMaxBytes/16 within [64 KiB, 16 MiB].
	SpoolSegmentBytes int64 `yaml:"spool_segment_bytes"`

	// QueueSize is the capacity of the in-memory queue in front of the spool. Submit never
	// blocks: when the queue is full the event is counted as lost and reported. Default 16384
	// (about 16 MiB of events at most).
	QueueSize int `yaml:"queue_size"`
	// SyncInterval is the shortest time between two fsyncs of the spool; events arriving in
	// between share one fsync. Default 5ms.
	SyncInterval time.Duration `yaml:"sync_interval"`
	// BatchEvents and BatchBytes bound one message to the collector. Defaults 2000 and 1 MiB.
	BatchEvents int `yaml:"batch_events"`
	BatchBytes  int `yaml:"batch_bytes"`
	// Window is how far (in sequence numbers) sending may run ahead of the collector's
	// acknowledgement. Default 50000.
	Window uint64 `yaml:"window"`
	// BackoffMin and BackoffMax bound the reconnect delay, which doubles after each failed
	// attempt and is jittered. Defaults 100ms and 30s.
	BackoffMin time.Duration `yaml:"backoff_min"`
	BackoffMax time.Duration `yaml:"backoff_max"`
	// KeepaliveInterval is the gRPC keepalive ping interval; a dead path is noticed within about
	// twice this. Default 20s.
	KeepaliveInterval time.Duration `yaml:"keepalive_interval"`
	// LossReportInterval is how often queue and kernel ring-buffer loss counts are turned into
	// loss events. Default 1s.
	LossReportInterval time.Duration `yaml:"loss_report_interval"`
	// CheckpointInterval is how often, while events flow, the agent signs a checkpoint of what it has
	// sent with its host key (see checkpoint.go); it also signs one when it stops. mTLS only.
	// Default 1m.
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`

	// BootID and AgentVersion are stamped on events that do not carry them. Default BootID: read
	// from /proc/sys/kernel/random/boot_id.
	BootID       string `yaml:"-"`
	AgentVersion string `yaml:"-"`
}

func (c *Config) setDefaults() error {
	if c.Collector == "" {
		return errors.New("export: no collector address configured: set collector (host:port)")
	}
	if c.SpoolDir == "" {
		return errors.New("export: no spool directory configured: set spool_dir")
	}
	if c.Plaintext {
		host, _, err := net.SplitHostPort(c.Collector)
		if err != nil {
			return fmt.Errorf("export: collector address %q: %w", c.Collector, err)
		}
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("export: plaintext export is only allowed to a loopback collector, not %q: configure ca_file, cert_file and key_file", c.Collector)
		}
		if c.PlaintextHost == "" {
			return errors.New("export: plaintext export needs plaintext_host (the host identity to claim)")
		}
	} else if c.CAFile == "" || c.CertFile == "" || c.KeyFile == "" {
		return errors.New("export: mTLS needs ca_file, cert_file and key_file (this host's own certificate); plaintext is for loopback demos only")
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.QueueSize, 16384)
	def(&c.BatchEvents, 2000)
	def(&c.BatchBytes, 1<<20)
	if c.Window == 0 {
		c.Window = 50000
	}
	defd(&c.SyncInterval, 5*time.Millisecond)
	defd(&c.BackoffMin, 100*time.Millisecond)
	defd(&c.BackoffMax, 30*time.Second)
	defd(&c.KeepaliveInterval, 20*time.Second)
	defd(&c.LossReportInterval, time.Second)
	defd(&c.CheckpointInterval, time.Minute)
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.BootID == "" {
		b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
		if err != nil {
			return fmt.Errorf("export: read boot id: %w", err)
		}
		c.BootID = strings.TrimSpace(string(b))
	}
	return nil
}

// transportCredentials builds the mTLS credentials, failing early on unreadable or mismatched
// files.
func (c *Config) transportCredentials() (credentials.TransportCredentials, *keyPair, error) {
	if c.Plaintext {
		return insecure.NewCredentials(), nil, nil
	}
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, nil, fmt.Errorf("export: read CA bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, nil, fmt.Errorf("export: %s holds no PEM certificate: give the CA that signs the collector's certificate", c.CAFile)
	}
	kp := &keyPair{cert: c.CertFile, key: c.KeyFile}
	if _, err := kp.get(); err != nil {
		return nil, nil, err
	}
	serverName := c.ServerName
	if serverName == "" {
		serverName, _, err = net.SplitHostPort(c.Collector)
		if err != nil {
			return nil, nil, fmt.Errorf("export: collector address %q: %w", c.Collector, err)
		}
	}
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    roots,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return kp.get()
		},
	}), kp, nil
}

// keyPair loads a client certificate and reloads it when either file changes.
type keyPair struct {
	cert, key string

	mu      sync.Mutex
	loaded  *tls.Certificate
	modCert time.Time
	modKey  time.Time
}

func (k *keyPair) get() (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ci, err1 := os.Stat(k.cert)
	ki, err2 := os.Stat(k.key)
	if err := errors.Join(err1, err2); err != nil {
		if k.loaded != nil {
			return k.loaded, nil // keep the last good pair while files are being replaced
		}
		return nil, fmt.Errorf("export: client certificate: %w", err)
	}
	if k.loaded != nil && ci.ModTime().Equal(k.modCert) && ki.ModTime().Equal(k.modKey) {
		return k.loaded, nil
	}
	pair, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		if k.loaded != nil {
			return k.loaded, nil
		}
		return nil, fmt.Errorf("export: load client certificate %s and key %s: %w", k.cert, k.key, err)
	}
	k.loaded, k.modCert, k.modKey = &pair, ci.ModTime(), ki.ModTime()
	return k.loaded, nil
}
