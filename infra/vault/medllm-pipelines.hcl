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
