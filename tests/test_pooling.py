"""Pooling: last token under left and right padding, mean, cls."""

import torch

from mlembed.pooling import ClsPooling, LastTokenPooling, MeanPooling
from tests.helpers import tiny_module


def test_last_token_pooling_finds_the_last_real_token_with_either_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    pool = LastTokenPooling()
    torch.testing.assert_close(pool(hidden, right), torch.stack([hidden[0, 1], hidden[1, 3]]))
    torch.testing.assert_close(pool(hidden, left), torch.stack([hidden[0, 3], hidden[1, 3]]))


def test_mean_and_cls_pooling():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(MeanPooling()(hidden, mask), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(ClsPooling()(hidden, mask), torch.tensor([[1.0, 2.0]]))


def _left_pad(inputs, pad_id):
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    lengths = mask.sum(1)
    left_ids, left_mask = torch.full_like(ids, pad_id), torch.zeros_like(mask)
    for i, n in enumerate(lengths.tolist()):
        left_ids[i, ids.shape[1] - n :] = ids[i, :n]
        left_mask[i, ids.shape[1] - n :] = 1
    return {"input_ids": left_ids, "attention_mask": left_mask}


def test_qwen3_last_token_embedding_is_the_same_with_left_and_right_padding():
    module = tiny_module("qwen3").eval()
    texts = ["a short one", "a considerably longer sentence with more tokens in it", "mid length text"]
    right = module.encoder.text_tokenizer(texts)
    assert (right["attention_mask"] == 0).any()  # the test needs real padding
    left = _left_pad(right, pad_id=0)
    layers = module.layers
    with torch.no_grad():
        from_right = module.encoder(right, layers)
        from_left = module.encoder(left, layers)
    for layer in layers:
        torch.testing.assert_close(from_left[layer], from_right[layer], atol=1e-5, rtol=1e-4)
