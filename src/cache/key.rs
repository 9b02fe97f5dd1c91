//! Cache keys: xxh3-128 over an unambiguous framing of everything that can change a result.
//!
//! Framing: a version tag, then for every field a one-byte field tag followed by its length
//! (u64 LE) and its bytes; lists carry their element count first, `Option`s a presence byte.
//! So no two different `KeyParts` produce the same byte stream (moving bytes from one field to
//! the next changes a length), and the only way to collide is a 128-bit hash collision.

use xxhash_rust::xxh3::Xxh3;

/// A result-cache key (xxh3-128). `Display`/[`CacheKey::hex`] give 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub u128);

impl CacheKey {
    /// 32 lowercase hex digits (the Redis entry key is `{prefix}:e:{hex}`).
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheKey({:032x})", self.0)
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Everything that determines a read-only statement's exact response bytes.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    pub environment: &'a str,
    pub database: &'a str,
    /// None when every table read is public (the result does not depend on the role).
    pub role: Option<&'a str>,
    pub search_path: &'a str,
    pub statement_text: &'a [u8],
    pub param_formats: &'a [i16],
    /// None = SQL NULL.
    pub params: &'a [Option<&'a [u8]>],
    pub result_formats: &'a [i16],
    /// TimeZone, DateStyle, IntervalStyle, extra_float_digits, bytea_output, client_encoding.
    pub settings: &'a [(&'a str, &'a str)],
    /// The tag of the request's first message: [`front::QUERY`] for the simple protocol, else
    /// the extended-protocol message that opens the batch (Parse or Bind).
    ///
    /// [`front::QUERY`]: crate::wire::tag::front::QUERY
    pub protocol: u8,
}

/// Framing version: bump when the framing or the meaning of a field changes.
const KEY_VERSION: &[u8] = b"pgsidecar-cache-key-v1";

struct Framer(Xxh3);

impl Framer {
    fn bytes(&mut self, tag: u8, b: &[u8]) {
        self.0.update(&[tag]);
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
    }

    fn count(&mut self, tag: u8, n: usize) {
        self.0.update(&[tag]);
        self.0.update(&(n as u64).to_le_bytes());
    }
}

impl KeyParts<'_> {
    pub fn key(&self) -> CacheKey {
        let mut f = Framer(Xxh3::new());
        f.bytes(0, KEY_VERSION);
        f.bytes(1, self.environment.as_bytes());
        f.bytes(2, self.database.as_bytes());
        match self.role {
            None => f.count(3, 0),
            Some(r) => {
                f.count(3, 1);
                f.bytes(4, r.as_bytes());
            }
        }
        f.bytes(5, self.search_path.as_bytes());
        f.bytes(6, self.statement_text);
        f.count(7, self.param_formats.len());
        for pf in self.param_formats {
            f.bytes(8, &pf.to_le_bytes());
        }
        f.count(9, self.params.len());
        for p in self.params {
            match p {
                None => f.count(10, 0),
                Some(v) => {
                    f.count(10, 1);
                    f.bytes(11, v);
                }
            }
        }
        f.count(12, self.result_formats.len());
        for rf in self.result_formats {
            f.bytes(13, &rf.to_le_bytes());
        }
        f.count(14, self.settings.len());
        for (name, value) in self.settings {
            f.bytes(15, name.as_bytes());
            f.bytes(16, value.as_bytes());
        }
        f.bytes(17, &[self.protocol]);
        CacheKey(f.0.digest128())
    }
}

impl From<&KeyParts<'_>> for CacheKey {
    fn from(p: &KeyParts<'_>) -> Self {
        p.key()
    }
}
