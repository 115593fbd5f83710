//! Randomness in the replicated state machines, drawn the way time is: the proposing
//! leader draws a [`Seed`] and writes it into the log entry, and every replica derives the
//! same values from it. What it protects (queue receipts) must not be guessable from
//! anything else a client sees, so values come from ChaCha20 keyed by the seed, one stream
//! per request of the entry: knowing some outputs tells nothing of the others.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// 256 random bits of one log entry, hex-encoded in the log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub [u8; 32]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(..)")
    }
}

impl Seed {
    /// The generator of request `position` of the entry.
    pub fn stream(&self, position: usize) -> Draws {
        let mut rng = ChaCha20Rng::from_seed(self.0);
        rng.set_stream(position as u64);
        Draws(rng)
    }
}

/// Deterministic unguessable values for one request.
pub struct Draws(ChaCha20Rng);

impl Draws {
    /// 128 bits as 32 lowercase hex digits.
    pub fn hex128(&mut self) -> String {
        let mut bytes = [0u8; 16];
        self.0.fill_bytes(&mut bytes);
        hex(&bytes)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

impl Serialize for Seed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("a seed is 64 hex digits");
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_every_replica_the_same_draws_and_each_request_its_own() {
        let seed = Seed([7; 32]);
        let (mut a, mut b, mut other) = (seed.stream(0), seed.stream(0), seed.stream(1));
        let first = a.hex128();
        assert_eq!(first.len(), 32);
        assert_eq!(first, b.hex128());
        assert_ne!(first, a.hex128(), "successive draws differ");
        assert_ne!(first, other.hex128(), "another request draws from another stream");
        assert_ne!(first, Seed([8; 32]).stream(0).hex128());
    }

    #[test]
    fn hex_is_two_lowercase_digits_per_byte_as_replicas_always_wrote_it() {
        // Receipts hold these digits: a replica on another build must write the same.
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), expected);
    }

    #[test]
    fn seeds_round_trip_as_hex() {
        let seed = Seed(std::array::from_fn(|i| i as u8 * 3));
        let text = serde_json::to_string(&seed).expect("encode");
        assert_eq!(text.len(), 66);
        assert_eq!(serde_json::from_str::<Seed>(&text).expect("decode"), seed);
        for bad in ["\"00\"", "\"zz\"", &format!("\"{}\"", "é".repeat(32)), "17"] {
            assert!(serde_json::from_str::<Seed>(bad).is_err(), "{bad}");
        }
    }
}
