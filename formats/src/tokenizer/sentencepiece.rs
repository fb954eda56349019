//! The pieces of a SentencePiece `tokenizer.model` (a protobuf `ModelProto`):
//! just enough of the wire format to read piece text, score and type.

/// SentencePiece piece types (`ModelProto.SentencePiece.Type`); numerically the
/// same as GGUF token types.
pub const NORMAL: i32 = 1;
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const USER_DEFINED: i32 = 4;
pub const UNUSED: i32 = 5;
pub const BYTE: i32 = 6;

#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: i32,
}

/// Parses the `pieces` field (1) of a `ModelProto`; other fields are skipped.
pub fn parse_pieces(buf: &[u8]) -> Result<Vec<Piece>, String> {
    let mut r = Reader { buf, pos: 0 };
    let mut pieces = Vec::new();
    while !r.done() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == 2 {
            pieces.push(parse_piece(r.bytes()?)?);
        } else {
            r.skip(wire)?;
        }
    }
    Ok(pieces)
}

fn parse_piece(buf: &[u8]) -> Result<Piece, String> {
    let mut r = Reader { buf, pos: 0 };
    // Protobuf defaults: score 0, type NORMAL.
    let mut piece = Piece {
        text: String::new(),
        score: 0.0,
        kind: NORMAL,
    };
    while !r.done() {
        match r.key()? {
            (1, 2) => {
                piece.text = String::from_utf8(r.bytes()?.to_vec())
                    .map_err(|_| "a piece is not valid UTF-8".to_owned())?
            }
            (2, 5) => piece.score = f32::from_le_bytes(r.fixed::<4>()?),
            (3, 0) => piece.kind = r.varint()? as i32,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(piece)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint too long at byte {}", self.pos))
    }

    fn key(&mut self) -> Result<(u64, u8), String> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("field of {n} bytes runs past the end at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| "length overflows".to_owned())?)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            w => Err(format!(
                "unsupported protobuf wire type {w} at byte {}",
                self.pos
            )),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes pieces the way protobuf does (for tests here and in tokenizer.rs).
    pub(crate) fn encode(pieces: &[(&str, f32, i32)]) -> Vec<u8> {
        fn varint(mut v: u64, out: &mut Vec<u8>) {
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
        }
        let mut out = Vec::new();
        // A trainer_spec-like field first, to be skipped.
        out.extend_from_slice(&[0x12, 0x02, 0x08, 0x01]);
        for (text, score, kind) in pieces {
            let mut p = Vec::new();
            p.push(0x0a);
            varint(text.len() as u64, &mut p);
            p.extend_from_slice(text.as_bytes());
            p.push(0x15);
            p.extend_from_slice(&score.to_le_bytes());
            if *kind != NORMAL {
                p.push(0x18);
                varint(*kind as u64, &mut p);
            }
            out.push(0x0a);
            varint(p.len() as u64, &mut out);
            out.extend_from_slice(&p);
        }
        out
    }

    #[test]
    fn round_trip() {
        let buf = encode(&[
            ("<unk>", 0.0, UNKNOWN),
            ("<0x0A>", 0.0, BYTE),
            ("▁the", -3.5, NORMAL),
        ]);
        let p = parse_pieces(&buf).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].kind, UNKNOWN);
        assert_eq!(p[2].text, "▁the");
        assert_eq!(p[2].score, -3.5);
        assert_eq!(p[2].kind, NORMAL);
        assert!(parse_pieces(&buf[..buf.len() - 3]).is_err());
    }
}
