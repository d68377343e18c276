"""Short content hashes that say whether two runs used the same inputs."""
import hashlib
import json


def tokenizer_fingerprint(tokenizer) -> str:
    """The vocabulary, merges, normalisation and added tokens (the fast tokenizer's serialised state, or the
    vocabulary of a slow one) and the special-token map: equal fingerprints tokenize every text alike."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256((text + special).encode()).hexdigest()[:16]


def data_fingerprint(dataset) -> str:
    """Identifies the training data: the dataset's own `fingerprint` (e.g. its token-cache key) or a hash
    of every example's token ids and labels."""
    if getattr(dataset, "fingerprint", None):
        return dataset.fingerprint
    digest = hashlib.sha256(str(len(dataset)).encode())
    for index in range(len(dataset)):
        item = dataset[index]
        digest.update(json.dumps([list(map(int, item["input_ids"])), list(map(int, item["labels"]))]).encode())
    return digest.hexdigest()[:16]
