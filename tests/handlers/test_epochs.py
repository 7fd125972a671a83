import pyro
import torch

from pyro_qem.handlers.epochs import EpochSubsampleMessenger


def indices(messenger, size, batch):
    with messenger:
        with pyro.plate("rows", size, subsample_size=batch) as idx:
            return idx.clone()


def test_each_pass_uses_every_element_once_in_a_new_order():
    torch.manual_seed(0)
    messenger = EpochSubsampleMessenger()
    passes = [torch.cat([indices(messenger, 20, 5) for _ in range(4)]) for _ in range(2)]
    for order in passes:
        assert sorted(order.tolist()) == list(range(20))
    assert not torch.equal(passes[0], passes[1])


def test_a_remainder_smaller_than_the_batch_starts_the_next_pass():
    torch.manual_seed(0)
    messenger = EpochSubsampleMessenger()
    batches = [indices(messenger, 10, 4) for _ in range(3)]
    first_pass = torch.cat(batches[:2])
    assert len(set(first_pass.tolist())) == 8 and all(len(b) == 4 for b in batches)


def test_explicit_indices_and_full_plates_are_left_alone():
    messenger = EpochSubsampleMessenger()
    with messenger:
        with pyro.plate("rows", 10, subsample=torch.tensor([3, 1])) as idx:
            assert idx.tolist() == [3, 1]
        with pyro.plate("all", 6) as idx:
            assert idx.tolist() == list(range(6))
    assert messenger._orders == {}
