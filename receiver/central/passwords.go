package central

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
)

// passwordIterations is mosquitto_passwd's PBKDF2 count for $7$ hashes.
const passwordIterations = 101

// PasswordLine returns the line of a password file (embedded_broker_passwords) for user,
// "<site>/<device>", with password as mosquitto_passwd writes it ($7$, PBKDF2-SHA512),
// for tools that set up a broker without mosquitto installed (the demo).
func PasswordLine(user, password string) (string, error) {
	if _, _, ok := splitIdentity(user); !ok {
		return "", fmt.Errorf("password line: user %q is not <site>/<device>", user)
	}
	// 16 bytes, not mosquitto_passwd's 12: FIPS 140-3 asks PBKDF2 for a salt of at
	// least 128 bits (Go refuses a shorter one under GODEBUG=fips140=only), and
	// mosquitto reads a salt of any length.
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("password line: %w", err)
	}
	hash, err := pbkdf2.Key(sha512.New, password, salt, passwordIterations, sha512.Size)
	if err != nil {
		return "", fmt.Errorf("password line: %w", err)
	}
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("%s:$7$%d$%s$%s", user, passwordIterations, enc(salt), enc(hash)), nil
}
