// Package seal encrypts what cascadefs puts in the archive, before it
// leaves the node: each chunk of a file's data with AES-256-GCM under a
// key of its own object (derived from an archive key, a random salt of
// the upload and the object's name), its index as the nonce, so a ranged
// recall opens only the chunks it fetches and a chunk moved to another
// place or object does not open. Small blobs (descriptions, journal
// batches) are sealed whole.
//
// Archive keys live in a key file, one per line, the first used for new
// uploads: a record names the key of its upload (by an ID derived from
// it), so a new key goes first in the file and the old ones stay for the
// files they sealed.
package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/cascadefs/cascadefs/internal/secret"
)

// Overhead is what sealing adds to each chunk (the GCM tag).
const Overhead = 16

// keyPrefix starts every archive key in a key file (and its version).
const keyPrefix = "cascadefs-archive-key-1:"

// ID names an archive key in records without giving anything of it away.
type ID [8]byte

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Key is one archive key.
type Key struct {
	ID     ID
	secret [32]byte
}

// Keyring is the keys of a key file: the first seals, all open.
type Keyring struct {
	Path string // the key file, named in errors
	keys []Key
}

// ErrNoKey: data sealed with a key the key file does not hold (or no key
// file is set).
var ErrNoKey = errors.New("archive key not available")

// NewKey returns a new archive key as a key file line.
func NewKey() string {
	var k [32]byte
	rand.Read(k[:])
	return keyPrefix + base64.StdEncoding.EncodeToString(k[:])
}

// Load reads a key file (under the rule for secret files).
func Load(path string) (*Keyring, error) {
	b, err := secret.Read("archive key file", path)
	if err != nil {
		return nil, err
	}
	return Parse(path, b)
}

// Parse reads the keys of a key file's contents: one per line, blank
// lines and lines starting with # skipped.
func Parse(path string, b []byte) (*Keyring, error) {
	r := &Keyring{Path: path}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		enc, ok := strings.CutPrefix(line, keyPrefix)
		raw, err := base64.StdEncoding.DecodeString(enc)
		if !ok || err != nil || len(raw) != 32 {
			return nil, fmt.Errorf("archive key file %s:%d: not an archive key (cascadefs keygen --archive-key makes one)", path, i+1)
		}
		k := Key{secret: [32]byte(raw)}
		mac := hmac.New(sha256.New, raw)
		mac.Write([]byte("cascadefs archive key id"))
		copy(k.ID[:], mac.Sum(nil))
		r.keys = append(r.keys, k)
	}
	if len(r.keys) == 0 {
		return nil, fmt.Errorf("archive key file %s: holds no key (cascadefs keygen --archive-key makes one)", path)
	}
	return r, nil
}

// Current is the key that seals new uploads.
func (r *Keyring) Current() *Key { return &r.keys[0] }

// Find returns the key named id.
func (r *Keyring) Find(id ID) (*Key, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: the data is sealed with archive key %s, and no encryption-key-file is set", ErrNoKey, id)
	}
	for i := range r.keys {
		if r.keys[i].ID == id {
			return &r.keys[i], nil
		}
	}
	return nil, fmt.Errorf("%w: the data is sealed with archive key %s, which the key file %s does not hold", ErrNoKey, id, r.Path)
}

// Salt is the random value of one upload: no two uploads share a chunk
// key, even of one object name.
type Salt [16]byte

// NewSalt returns a random salt.
func NewSalt() Salt {
	var s Salt
	rand.Read(s[:])
	return s
}

// Object seals and opens the chunks of one archive object.
type Object struct{ aead cipher.AEAD }

// Object returns the chunk cipher of the object named name, uploaded
// with salt.
func (k *Key) Object(salt Salt, name string) (*Object, error) {
	aead, err := k.aead(salt[:], "cascadefs chunks "+name)
	if err != nil {
		return nil, err
	}
	return &Object{aead}, nil
}

func (k *Key) aead(salt []byte, info string) (cipher.AEAD, error) {
	sub, err := hkdf.Key(sha256.New, k.secret[:], salt, info, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(sub)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func chunkNonce(index uint32) []byte {
	var n [12]byte
	binary.BigEndian.PutUint32(n[8:], index)
	return n[:]
}

// Seal appends chunk index (the file's chunk number), sealed, to dst.
func (o *Object) Seal(dst, plain []byte, index uint32) []byte {
	return o.aead.Seal(dst, chunkNonce(index), plain, nil)
}

// ErrOpen: a chunk or blob that does not open: altered, moved, or sealed
// by another key.
var ErrOpen = errors.New("sealed data does not open (altered or moved)")

// Open appends chunk index, opened, to dst (which may be sealed[:0]).
func (o *Object) Open(dst, sealed []byte, index uint32) ([]byte, error) {
	b, err := o.aead.Open(dst, chunkNonce(index), sealed, nil)
	if err != nil {
		return nil, ErrOpen
	}
	return b, nil
}

// blobMagic starts a sealed blob: magic, the key's ID, a random nonce,
// the sealed bytes.
var blobMagic = []byte("CFSB1")

// SealBlob seals a whole blob stored under the archive name name (bound
// to it: a blob copied over another does not open). Without a keyring
// (nil) the blob goes as it is.
func (r *Keyring) SealBlob(name string, plain []byte) ([]byte, error) {
	if r == nil {
		return plain, nil
	}
	k := r.Current()
	aead, err := k.aead(nil, "cascadefs blob")
	if err != nil {
		return nil, err
	}
	out := append([]byte{}, blobMagic...)
	out = append(out, k.ID[:]...)
	nonce := make([]byte, aead.NonceSize())
	rand.Read(nonce)
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plain, []byte(name)), nil
}

// IsSealedBlob reports whether b is a sealed blob.
func IsSealedBlob(b []byte) bool { return bytes.HasPrefix(b, blobMagic) }

// OpenBlob opens a blob that SealBlob sealed under name. A blob that is
// not sealed (written while no key was set) is returned as it is.
func (r *Keyring) OpenBlob(name string, b []byte) ([]byte, error) {
	if !IsSealedBlob(b) {
		return b, nil
	}
	rest := b[len(blobMagic):]
	if len(rest) < len(ID{})+12+Overhead {
		return nil, fmt.Errorf("%s: %w: too short", name, ErrOpen)
	}
	k, err := r.Find(ID(rest[:8]))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	aead, err := k.aead(nil, "cascadefs blob")
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, rest[8:20], rest[20:], []byte(name))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, ErrOpen)
	}
	return plain, nil
}
