//! What a GGUF file's header says (architecture, parameters, quantisation,
//! context length, the shape of its KV cache), read with `gguf-rs-lib`, which
//! reads the header, metadata and tensor table only (never the weights) and
//! checks every length and type against the file before it allocates.

use std::path::Path;

use serde::Serialize;

/// The header's figures; each is absent when the file does not say.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GgufInfo {
    pub architecture: Option<String>,
    /// Elements of every tensor in this file together.
    pub parameters: u64,
    /// `general.file_type` as llama.cpp names it (`Q4_K_M`, `F16`, …).
    pub quantisation: Option<String>,
    pub context_length: Option<u64>,
    pub layers: Option<u64>,
    pub embedding_length: Option<u64>,
    pub heads: Option<u64>,
    pub kv_heads: Option<u64>,
}

/// Reads `path`'s header; the error says why it could not be, in a sentence.
pub fn read(path: &Path) -> Result<GgufInfo, String> {
    use gguf_rs_lib::GGUFError;
    let reader =
        gguf_rs_lib::reader::file_reader::open_gguf_file(path).map_err(|error| match error {
            GGUFError::InvalidMagic { .. } => {
                "not a GGUF file (its first bytes are not `GGUF`)".to_string()
            }
            GGUFError::UnexpectedEof => {
                "cut short: the file ends inside its header or tensors".to_string()
            }
            GGUFError::Io(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                "cut short: the file ends inside its header".to_string()
            }
            other => format!("not a readable GGUF file: {other}"),
        })?;
    let metadata = reader.metadata();
    let architecture = metadata
        .get_string("general.architecture")
        .map(str::to_string);
    let number = |suffix: &str| {
        let prefix = architecture.as_deref()?;
        metadata.get_u64(&format!("{prefix}.{suffix}"))
    };
    let heads = number("attention.head_count");
    Ok(GgufInfo {
        parameters: reader.tensor_infos().iter().fold(0u64, |sum, tensor| {
            sum.saturating_add(tensor.element_count())
        }),
        quantisation: metadata
            .get_u64("general.file_type")
            .map(|kind| file_type(kind).to_string()),
        context_length: number("context_length"),
        layers: number("block_count"),
        embedding_length: number("embedding_length"),
        kv_heads: number("attention.head_count_kv").or(heads),
        heads,
        architecture,
    })
}

/// llama.cpp's `llama_ftype` names.
fn file_type(kind: u64) -> &'static str {
    match kind {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        28 => "IQ4_XS",
        32 => "BF16",
        _ => "other",
    }
}

impl GgufInfo {
    /// The GPU memory a model needs, in MiB: its weights (the files' size)
    /// and an f16 KV cache for `context` tokens (keys and values, each layer,
    /// each KV head); `None` when the header lacks a figure for it.
    pub fn vram_mib(&self, weights_bytes: u64, context: Option<u64>) -> Option<u64> {
        let layers = self.layers?;
        let head_size = self.embedding_length? / self.heads?.max(1);
        let context = context.or(self.context_length)?;
        let kv_cache = 2u64
            .checked_mul(layers)?
            .checked_mul(context)?
            .checked_mul(self.kv_heads?)?
            .checked_mul(head_size)?
            .checked_mul(2)?;
        Some(weights_bytes.checked_add(kv_cache)?.div_ceil(1 << 20))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small, real GGUF v3 file: metadata and one 4×8 F32 tensor.
    pub fn tiny_gguf(architecture: &str, context: u32) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, text: &str) {
            out.extend_from_slice(&(text.len() as u64).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes()); // tensors
        out.extend_from_slice(&6u64.to_le_bytes()); // metadata
        string(&mut out, "general.architecture");
        out.extend_from_slice(&8u32.to_le_bytes()); // a string
        string(&mut out, architecture);
        for (key, value) in [
            (format!("{architecture}.context_length"), context),
            (format!("{architecture}.block_count"), 2),
            (format!("{architecture}.embedding_length"), 64),
            (format!("{architecture}.attention.head_count"), 4),
            ("general.file_type".to_string(), 15),
        ] {
            string(&mut out, &key);
            out.extend_from_slice(&4u32.to_le_bytes()); // a u32
            out.extend_from_slice(&value.to_le_bytes());
        }
        string(&mut out, "token_embd.weight");
        out.extend_from_slice(&2u32.to_le_bytes()); // dimensions
        out.extend_from_slice(&4u64.to_le_bytes());
        out.extend_from_slice(&8u64.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // F32
        out.extend_from_slice(&0u64.to_le_bytes()); // offset
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend_from_slice(&[0u8; 4 * 8 * 4]);
        out
    }

    #[test]
    fn a_header_says_what_the_model_is_and_a_bad_file_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("m.gguf");
        std::fs::write(&good, tiny_gguf("llama", 4096)).unwrap();
        let info = read(&good).unwrap();
        assert_eq!(info.architecture.as_deref(), Some("llama"));
        assert_eq!(info.parameters, 32);
        assert_eq!(info.quantisation.as_deref(), Some("Q4_K_M"));
        assert_eq!(info.context_length, Some(4096));
        assert_eq!((info.layers, info.kv_heads), (Some(2), Some(4)));
        // Weights 1 MiB + 2 (K, V) × 2 layers × 1024 tokens × 4 heads × 16 × 2 bytes.
        assert_eq!(info.vram_mib(1 << 20, Some(1024)), Some(2));

        let whole = tiny_gguf("qwen2", 32768);
        for cut in [3, 30, 100, whole.len() - 10] {
            let path = dir.path().join(format!("cut-{cut}.gguf"));
            std::fs::write(&path, &whole[..cut]).unwrap();
            let error = read(&path).unwrap_err();
            assert!(error.contains("cut short"), "cut at {cut}: {error}");
        }
        let zip = dir.path().join("zip.gguf");
        std::fs::write(&zip, b"PK\x03\x04 and then some bytes of a zip").unwrap();
        assert!(read(&zip).unwrap_err().contains("not a GGUF file"));
    }
}
