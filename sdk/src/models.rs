//! The OpenAI `/v1/models` answer, as vLLM, llama.cpp and most servers give it.

use serde::Deserialize;

use crate::{HttpResponse, Model};

#[derive(Deserialize)]
struct ModelList {
    data: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    id: String,
    owned_by: Option<String>,
    // vLLM says `max_model_len`; others say `context_length`.
    max_model_len: Option<u32>,
    context_length: Option<u32>,
}

/// Parses an OpenAI model list (`{"object": "list", "data": [{"id": …}]}`).
pub fn openai_models(response: &HttpResponse) -> Result<Vec<Model>, String> {
    if !(200..300).contains(&response.status) {
        return Err(format!("the model list answered HTTP {}", response.status));
    }
    let list: ModelList = serde_json::from_slice(&response.body)
        .map_err(|error| format!("the model list is not an OpenAI model list: {error}"))?;
    Ok(list
        .data
        .into_iter()
        .map(|entry| Model {
            id: entry.id,
            owned_by: entry.owned_by,
            context_length: entry.max_model_len.or(entry.context_length),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::json_response;

    #[test]
    fn parses_a_vllm_model_list() {
        let body = r#"{"object":"list","data":[{"id":"Qwen/Qwen2.5-1.5B-Instruct","object":"model","created":1730000000,"owned_by":"vllm","root":"Qwen/Qwen2.5-1.5B-Instruct","parent":null,"max_model_len":32768,"permission":[]}]}"#;
        let models = openai_models(&json_response(200, body)).unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].id, "Qwen/Qwen2.5-1.5B-Instruct");
        assert_eq!(models[0].owned_by.as_deref(), Some("vllm"));
        assert_eq!(models[0].context_length, Some(32768));
    }

    #[test]
    fn parses_a_llama_server_model_list() {
        let body = r#"{"models":[{"name":"tiny.gguf","model":"tiny.gguf"}],"object":"list","data":[{"id":"tiny.gguf","object":"model","created":1730000000,"owned_by":"llamacpp","meta":{"vocab_type":1,"n_vocab":32000,"n_ctx_train":2048}}]}"#;
        let models = openai_models(&json_response(200, body)).unwrap();
        assert_eq!(models[0].id, "tiny.gguf");
        assert_eq!(models[0].context_length, None);
    }

    #[test]
    fn refuses_errors_and_garbage() {
        assert!(openai_models(&json_response(503, "{}"))
            .unwrap_err()
            .contains("503"));
        assert!(openai_models(&json_response(200, "<html>"))
            .unwrap_err()
            .contains("not an OpenAI model list"));
    }
}
