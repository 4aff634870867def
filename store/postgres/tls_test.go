package postgres_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// certPair makes a certificate signed by parent (self-signed when nil).
func certPair(t *testing.T, cn string, isCA bool, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  isCA,
		BasicConstraintsValid: true,
	}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign
	} else {
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// TestTLSThroughTheURL: sslmode=verify-full with sslrootcert in the
// database URL connects to a server with TLS, and a server whose
// certificate the CA did not sign is refused with a clear error.
func TestTLSThroughTheURL(t *testing.T) {
	t.Parallel()
	if testenv.PGBinDir() == "" {
		t.Fatal("pg_ctl/initdb are required for this test")
	}
	ca, caKey, caPEM, _ := certPair(t, "artifactstore test CA", true, nil, nil)
	_, _, srvPEM, srvKeyPEM := certPair(t, "127.0.0.1", false, ca, caKey)
	c, err := testenv.NewCluster()
	require.NoError(t, err)
	t.Cleanup(c.Remove)
	crt, err := c.WriteFile("server.crt", srvPEM)
	require.NoError(t, err)
	key, err := c.WriteFile("server.key", srvKeyPEM)
	require.NoError(t, err)
	c.Options = []string{"ssl=on", "ssl_cert_file=" + crt, "ssl_key_file=" + key}
	require.NoError(t, c.Start())

	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(caFile, caPEM, 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := "postgres://postgres@127.0.0.1:" + itoa(c.Port) + "/postgres?sslmode=verify-full&sslrootcert=" + caFile
	db, err := postgres.Open(ctx, postgres.Config{URL: url})
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Migrate(ctx)
	require.NoError(t, err)
	storetest.Append(t, db, storetest.Created(t, "p1", "web", "1", "alice"))
	head, err := db.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), head)

	// Another CA: the server's certificate is not trusted.
	_, _, otherPEM, _ := certPair(t, "someone else", true, nil, nil)
	otherFile := filepath.Join(dir, "other.pem")
	require.NoError(t, os.WriteFile(otherFile, otherPEM, 0o600))
	_, err = postgres.Open(ctx, postgres.Config{URL: "postgres://postgres@127.0.0.1:" + itoa(c.Port) + "/postgres?sslmode=verify-full&sslrootcert=" + otherFile})
	require.Error(t, err)
	require.Contains(t, err.Error(), "certificate")
}
