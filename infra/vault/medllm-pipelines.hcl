# Least-privilege Vault/OpenBao policy for the medllm-pipelines runtime token.
# The pipelines never read key material: they ask transit to generate and
# unwrap data keys, encrypt/decrypt short values (ledger paths) and compute
# HMAC pseudonyms. Key creation and rotation belong to an operator token.
path "transit/datakey/plaintext/medllm-raw-zone" {
  capabilities = ["update"]
}
path "transit/decrypt/medllm-raw-zone" {
  capabilities = ["update"]
}
path "transit/encrypt/medllm-raw-zone" {
  capabilities = ["update"]
}
path "transit/hmac/medllm-pseudonym/*" {
  capabilities = ["update"]
}
path "transit/keys/medllm-raw-zone" {
  capabilities = ["read"]
}
path "transit/keys/medllm-pseudonym" {
  capabilities = ["read"]
}
# The audit log's keyed checkpoints (HMAC with a key the writer can use but
# never read) and the key lookup that records its version.
path "transit/hmac/medllm-audit" {
  capabilities = ["update"]
}
path "transit/hmac/medllm-audit/*" {
  capabilities = ["update"]
}
path "transit/keys/medllm-audit" {
  capabilities = ["read"]
}
# Governed exports: data keys for export files (the recipient is given its own
# decrypt grant on medllm-export by the operator, never this token's).
path "transit/datakey/plaintext/medllm-export" {
  capabilities = ["update"]
}
path "transit/keys/medllm-export" {
  capabilities = ["read"]
}
