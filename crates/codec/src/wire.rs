//! The versioned wire format (byte tables in `docs/wire-format.md`).
//!
//! Decoding never trusts a length field for allocation: every size is checked against what the
//! [`Schema`] allows before anything is read or allocated, and the whole payload is bounded by
//! [`Schema::max_payload_bytes`] before it is parsed.

use crate::config::{IndexCoding, Transform, ValueCoding};
use crate::error::DecodeError;
use crate::index;
use crate::payload::{Payload, Quantized, SparseTensor, Values};
use crate::plan::ChunkPlan;
use crate::quant::{MAX_SCALE, MIN_SCALE};
use crate::schema::{Schema, bits_per_code, value_bytes};
use crate::{codes, schema::MAX_NAME_LEN};

pub const MAGIC: [u8; 4] = *b"TPLG";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 12;
pub const TRAILER_LEN: usize = 4;

const TRANSFORM_NONE: u8 = 0;
const TRANSFORM_DCT: u8 = 1;
const INDEX_PACKED12: u8 = 0;
const INDEX_RICE: u8 = 1;
const VALUES_QUANTIZED: u8 = 0;
const VALUES_F32: u8 = 1;
const VALUES_BF16: u8 = 2;

/// Encodes a payload whose tensors follow the schema's order. Packed12 falls back to Rice for a
/// tensor whose chunks are longer than 4096 values (12 bits cannot address them).
pub fn encode(schema: &Schema, payload: &Payload, coding: IndexCoding) -> Vec<u8> {
    let mut out = Vec::with_capacity(schema.max_payload_bytes().min(1 << 30));
    begin_payload(payload.tensors.len(), &mut out);
    for (i, tensor) in payload.tensors.iter().enumerate() {
        encode_tensor(schema, i, tensor, coding, &mut out);
    }
    end_payload(&mut out);
    out
}

/// Schema tensor `i`'s record, exactly as [`encode`] writes it inside a payload: a node whose
/// ranks compress different tensors encodes each where it was made and [`assemble`]s them.
pub fn encode_record(
    schema: &Schema,
    i: usize,
    tensor: &SparseTensor,
    coding: IndexCoding,
) -> Vec<u8> {
    let mut out = Vec::new();
    encode_tensor(schema, i, tensor, coding, &mut out);
    out
}

/// A payload from every schema tensor's record, in schema order: the bytes [`encode`] writes
/// for the same tensors. The records are not parsed (they come from the node's own ranks); the
/// count is checked.
pub fn assemble(schema: &Schema, records: &[&[u8]]) -> Result<Vec<u8>, DecodeError> {
    if records.len() != schema.len() {
        return Err(DecodeError::TensorCount {
            expected: schema.len(),
            found: records.len(),
        });
    }
    let body: usize = records.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + body + TRAILER_LEN);
    begin_payload(records.len(), &mut out);
    for record in records {
        out.extend_from_slice(record);
    }
    end_payload(&mut out);
    Ok(out)
}

fn begin_payload(tensors: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(tensors as u32).to_le_bytes());
}

fn end_payload(out: &mut Vec<u8>) {
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn encode_tensor(
    schema: &Schema,
    i: usize,
    tensor: &SparseTensor,
    coding: IndexCoding,
    out: &mut Vec<u8>,
) {
    let spec = schema.spec(i);
    let plan = schema.plan(i);
    out.extend_from_slice(&(spec.name.len() as u16).to_le_bytes());
    out.extend_from_slice(spec.name.as_bytes());
    out.push(spec.shape.len() as u8);
    for &d in &spec.shape {
        out.extend_from_slice(&(d as u32).to_le_bytes());
    }
    for v in [plan.chunk_rows, plan.chunk_cols, plan.k] {
        out.extend_from_slice(&(v as u32).to_le_bytes());
    }
    out.push(match schema.config().transform {
        Transform::None => TRANSFORM_NONE,
        Transform::Dct => TRANSFORM_DCT,
    });
    let (tag, param, index_bytes) = match coding {
        IndexCoding::Packed12 if index::packed12_fits(plan) => {
            (INDEX_PACKED12, 0, index::encode_packed12(&tensor.indices))
        }
        _ => {
            let (b, bytes) = index::encode_rice(plan, &tensor.indices);
            (INDEX_RICE, b, bytes)
        }
    };
    out.extend_from_slice(&[tag, param]);
    let value_section = match &tensor.values {
        Values::Quantized(q) => {
            out.push(VALUES_QUANTIZED);
            out.extend_from_slice(&q.n_bins().to_le_bytes());
            out.extend_from_slice(&q.shift.to_le_bytes());
            out.extend_from_slice(&q.scale.to_le_bytes());
            for l in &q.lookup {
                out.extend_from_slice(&l.to_le_bytes());
            }
            codes::pack(&q.codes, bits_per_code(q.n_bins()))
        }
        Values::F32(v) => {
            out.push(VALUES_F32);
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        Values::Bf16(v) => {
            out.push(VALUES_BF16);
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
    };
    for section in [&index_bytes, &value_section] {
        out.extend_from_slice(&(section.len() as u32).to_le_bytes());
        out.extend_from_slice(section);
    }
}

/// Validates and decodes an untrusted payload against the schema.
pub fn decode(schema: &Schema, bytes: &[u8]) -> Result<Payload, DecodeError> {
    decode_keeping(schema, bytes, |_| true)
}

/// [`decode`], validating every tensor, but keeping only the tensors `keep` names: the others
/// are left empty (no indices, no values), so a rank that applies only its own tensors holds
/// only their share of each payload.
pub fn decode_keeping(
    schema: &Schema,
    bytes: &[u8],
    keep: impl Fn(usize) -> bool,
) -> Result<Payload, DecodeError> {
    let limit = schema.max_payload_bytes();
    if bytes.len() > limit {
        return Err(DecodeError::Oversize {
            len: bytes.len(),
            limit,
        });
    }
    let mut r = Reader::new(bytes, String::new());
    if r.take(4)? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    check_crc(bytes)?;
    let body = &bytes[..bytes.len() - TRAILER_LEN];
    let mut r = Reader {
        bytes: body,
        pos: 6,
        tensor: String::new(),
    };
    let flags = r.u16()?;
    if flags != 0 {
        return Err(DecodeError::UnknownTag {
            tensor: String::new(),
            field: "header flags",
            tag: flags as u8,
        });
    }
    let count = r.u32()? as usize;
    if count != schema.len() {
        return Err(DecodeError::TensorCount {
            expected: schema.len(),
            found: count,
        });
    }
    let mut slots: Vec<Option<SparseTensor>> = vec![None; schema.len()];
    for _ in 0..count {
        let (i, tensor) = decode_tensor(schema, &mut r)?;
        if slots[i].is_some() {
            return Err(DecodeError::DuplicateTensor {
                tensor: schema.spec(i).name.clone(),
            });
        }
        slots[i] = Some(if keep(i) {
            tensor
        } else {
            SparseTensor {
                indices: Vec::new(),
                values: Values::F32(Vec::new()),
            }
        });
    }
    if r.remaining() > 0 {
        return Err(DecodeError::TrailingBytes {
            extra: r.remaining(),
        });
    }
    // count == schema.len() and no duplicates, so every slot is filled.
    Ok(Payload {
        tensors: slots.into_iter().flatten().collect(),
    })
}

fn check_crc(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(DecodeError::Truncated {
            tensor: String::new(),
            needed: HEADER_LEN + TRAILER_LEN - bytes.len(),
            available: 0,
        });
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    Ok(())
}

fn decode_tensor(schema: &Schema, r: &mut Reader) -> Result<(usize, SparseTensor), DecodeError> {
    let name_len = r.u16()? as usize;
    if name_len == 0 || name_len > MAX_NAME_LEN {
        return Err(DecodeError::BadName);
    }
    let name = std::str::from_utf8(r.take(name_len)?).map_err(|_| DecodeError::BadName)?;
    let i = schema
        .index_of(name)
        .ok_or_else(|| DecodeError::UnknownTensor {
            tensor: name.into(),
        })?;
    r.tensor = name.to_owned();
    let spec = schema.spec(i);
    let plan = schema.plan(i);
    let rank = r.u8()? as usize;
    if rank > 2 {
        return Err(shape_error(&r.tensor, &spec.shape, vec![0; rank]));
    }
    let shape = (0..rank)
        .map(|_| r.u32().map(|d| d as usize))
        .collect::<Result<Vec<_>, _>>()?;
    if shape != spec.shape {
        return Err(shape_error(&r.tensor, &spec.shape, shape));
    }
    check_plan(r, plan)?;
    let transform = r.u8()?;
    let expected_transform = match schema.config().transform {
        Transform::None => TRANSFORM_NONE,
        Transform::Dct => TRANSFORM_DCT,
    };
    if transform != expected_transform {
        return Err(setting(
            &r.tensor,
            "transform",
            expected_transform,
            transform,
        ));
    }
    let (index_tag, rice_param) = (r.u8()?, r.u8()?);
    let value_tag = r.u8()?;
    let quant_header = decode_value_header(schema, r, value_tag)?;
    let index_bytes = r.section()?;
    let indices = match index_tag {
        INDEX_PACKED12 => index::decode_packed12(plan, index_bytes, &r.tensor)?,
        INDEX_RICE => index::decode_rice(plan, index_bytes, rice_param, &r.tensor)?,
        tag => {
            return Err(DecodeError::UnknownTag {
                tensor: r.tensor.clone(),
                field: "index coding",
                tag,
            });
        }
    };
    let value_bytes_in = r.section()?;
    let values = decode_values(schema, plan, quant_header, value_bytes_in, &r.tensor)?;
    Ok((i, SparseTensor { indices, values }))
}

fn check_plan(r: &mut Reader, plan: &ChunkPlan) -> Result<(), DecodeError> {
    for (field, expected) in [
        ("chunk rows", plan.chunk_rows),
        ("chunk columns", plan.chunk_cols),
        ("k", plan.k),
    ] {
        let found = r.u32()? as usize;
        if found != expected {
            return Err(DecodeError::Setting {
                tensor: r.tensor.clone(),
                field,
                expected: expected.to_string(),
                found: found.to_string(),
            });
        }
    }
    Ok(())
}

/// Quantizer header: shift, scale and lookup table, all checked.
struct QuantHeader {
    shift: f32,
    scale: f32,
    lookup: Vec<f32>,
}

fn decode_value_header(
    schema: &Schema,
    r: &mut Reader,
    tag: u8,
) -> Result<Option<QuantHeader>, DecodeError> {
    let expected = schema.config().values;
    let expected_tag = match expected {
        ValueCoding::Quantized { .. } => VALUES_QUANTIZED,
        ValueCoding::F32 => VALUES_F32,
        ValueCoding::Bf16 => VALUES_BF16,
    };
    if tag != expected_tag {
        if tag > VALUES_BF16 {
            return Err(DecodeError::UnknownTag {
                tensor: r.tensor.clone(),
                field: "value coding",
                tag,
            });
        }
        return Err(setting(&r.tensor, "value coding", expected_tag, tag));
    }
    let ValueCoding::Quantized { n_bins, .. } = expected else {
        return Ok(None);
    };
    let found_bins = r.u16()?;
    if found_bins != n_bins {
        return Err(DecodeError::Setting {
            tensor: r.tensor.clone(),
            field: "number of bins",
            expected: n_bins.to_string(),
            found: found_bins.to_string(),
        });
    }
    let shift = finite(r.f32()?, &r.tensor, "shift")?;
    let scale = finite(r.f32()?, &r.tensor, "scale")?;
    if !(MIN_SCALE..=MAX_SCALE).contains(&scale.abs()) {
        return Err(DecodeError::ScaleOutOfBounds {
            tensor: r.tensor.clone(),
            scale,
            min: MIN_SCALE,
            max: MAX_SCALE,
        });
    }
    let lookup = (0..n_bins)
        .map(|_| r.f32().and_then(|l| finite(l, &r.tensor, "lookup table")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(QuantHeader {
        shift,
        scale,
        lookup,
    }))
}

fn decode_values(
    schema: &Schema,
    plan: &ChunkPlan,
    quant: Option<QuantHeader>,
    bytes: &[u8],
    tensor: &str,
) -> Result<Values, DecodeError> {
    let n = plan.kept();
    let expected = value_bytes(schema.config().values, n);
    if bytes.len() != expected {
        return Err(DecodeError::SectionLength {
            tensor: tensor.into(),
            section: "value",
            expected: expected.to_string(),
            found: bytes.len(),
        });
    }
    let values = match (schema.config().values, quant) {
        (ValueCoding::Quantized { n_bins, .. }, Some(h)) => {
            let codes = codes::unpack(bytes, n, bits_per_code(n_bins), n_bins, tensor)?;
            if h.lookup.iter().any(|&l| !(l + h.shift).is_finite()) {
                return Err(DecodeError::NonFinite {
                    tensor: tensor.into(),
                    field: "lookup table + shift",
                });
            }
            Values::Quantized(Quantized {
                shift: h.shift,
                scale: h.scale,
                lookup: h.lookup,
                codes,
            })
        }
        (ValueCoding::F32, _) => {
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(DecodeError::NonFinite {
                    tensor: tensor.into(),
                    field: "values",
                });
            }
            Values::F32(v)
        }
        _ => {
            let v: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            // bf16 shares f32's exponent: all-ones exponent bits mean NaN or infinity.
            if v.iter().any(|&x| x & 0x7F80 == 0x7F80) {
                return Err(DecodeError::NonFinite {
                    tensor: tensor.into(),
                    field: "values",
                });
            }
            Values::Bf16(v)
        }
    };
    Ok(values)
}

fn finite(x: f32, tensor: &str, field: &'static str) -> Result<f32, DecodeError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(DecodeError::NonFinite {
            tensor: tensor.into(),
            field,
        })
    }
}

fn setting(tensor: &str, field: &'static str, expected: u8, found: u8) -> DecodeError {
    DecodeError::Setting {
        tensor: tensor.into(),
        field,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

fn shape_error(tensor: &str, expected: &[usize], found: Vec<usize>) -> DecodeError {
    DecodeError::Shape {
        tensor: tensor.into(),
        expected: expected.to_vec(),
        found,
    }
}

/// Bounds-checked little-endian reader; `tensor` names the tensor being read for errors.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    tensor: String,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], tensor: String) -> Reader<'a> {
        Reader {
            bytes,
            pos: 0,
            tensor,
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                tensor: self.tensor.clone(),
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn f32(&mut self) -> Result<f32, DecodeError> {
        self.array().map(f32::from_le_bytes)
    }

    /// A u32 length followed by that many bytes (bounded by what is left, never allocated).
    fn section(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}
