"""data.document_mask: attention within documents only on packed blocks (polycom.model.modeling._within_documents)."""

import pytest
import torch

from polycom.train.build import compose_config, model_config
from test_train import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def packed_documents(eos: int, lengths, seed: int = 0):
    """Documents of random non-EOS tokens, each ending with EOS, and their concatenation."""
    generator = torch.Generator().manual_seed(seed)
    documents = [torch.cat([torch.randint(1, 512, (n - 1,), generator=generator), torch.tensor([eos])])
                 for n in lengths]
    return documents, torch.cat(documents)


@pytest.mark.parametrize("activation", ["polynorm", "swiglu"])
def test_each_document_of_a_packed_block_scores_as_it_does_alone(make_tiny_model, tiny_tokenizer, activation):
    eos = tiny_tokenizer.eos_token_id
    masked = make_tiny_model(activation, document_mask=True)
    documents, block = packed_documents(eos, [37, 5, 60, 1, 25])
    with torch.no_grad():
        packed = masked(input_ids=block[None]).logits[0]
        start = 0
        for document in documents:
            alone = masked(input_ids=document[None]).logits[0]
            torch.testing.assert_close(packed[start: start + len(document)], alone, atol=2e-5, rtol=1e-5)
            start += len(document)


def test_without_the_mask_later_documents_see_earlier_ones(make_tiny_model, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    plain, masked = make_tiny_model(document_mask=False), make_tiny_model(document_mask=True)
    documents, block = packed_documents(eos, [30, 30])
    with torch.no_grad():
        first_plain, first_masked = plain(input_ids=block[None]).logits[0], masked(input_ids=block[None]).logits[0]
        second_alone = masked(input_ids=documents[1][None]).logits[0]
    torch.testing.assert_close(first_plain[:30], first_masked[:30])  # the first document sees nothing else anyway
    assert (first_plain[30:] - second_alone).abs().max() > 1e-3
    torch.testing.assert_close(first_masked[30:], second_alone, atol=2e-5, rtol=1e-5)


def test_rows_of_a_batch_get_their_own_document_boundaries(make_tiny_model, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    masked = make_tiny_model(document_mask=True)
    _, a = packed_documents(eos, [10, 22], seed=1)
    _, b = packed_documents(eos, [25, 7], seed=2)
    with torch.no_grad():
        together = masked(input_ids=torch.stack([a, b])).logits
        torch.testing.assert_close(together[0], masked(input_ids=a[None]).logits[0], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(together[1], masked(input_ids=b[None]).logits[0], atol=2e-5, rtol=1e-5)


def test_data_document_mask_reaches_the_model_and_is_off_by_default(tiny_tokenizer):
    assert model_config(compose_config(TINY), tiny_tokenizer).document_mask is False
    config = model_config(compose_config(TINY + ["data.document_mask=true"]), tiny_tokenizer)
    assert config.document_mask is True and config.eos_token_id == tiny_tokenizer.eos_token_id
