from trapline.pipelines.batching import MicroBatcher, batches


class FakeClock:
    """A clock the test moves by hand (the batcher reads time only through it)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_batch_is_released_when_full():
    batcher = MicroBatcher(3, max_wait_s=10, clock=FakeClock())
    assert batcher.add(1) is None and batcher.add(2) is None
    assert batcher.add(3) == [1, 2, 3]
    assert len(batcher) == 0


def test_partial_batch_is_released_when_its_oldest_item_waited_long_enough():
    clock = FakeClock()
    batcher = MicroBatcher(8, max_wait_s=0.5, clock=clock)
    batcher.add("a")
    clock.now = 0.3
    batcher.add("b")
    assert batcher.poll() is None
    clock.now = 0.5
    assert batcher.poll() == ["a", "b"]
    assert batcher.poll() is None


def test_finite_input_gives_full_batches_then_the_rest():
    assert list(batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batches([], 3)) == []
