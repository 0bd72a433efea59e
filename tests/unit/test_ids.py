from __future__ import annotations

from services.common.ids import UlidGenerator, encode_ulid, is_ulid, new_origin, ulid_floor, ulid_timestamp


def test_ids_are_ulids_carrying_their_timestamp() -> None:
    generator = UlidGenerator(clock=lambda: 1_700_000_000_123)
    msg_id, ts = generator.mint()
    assert is_ulid(msg_id) and len(msg_id) == 26
    assert ts == 1_700_000_000_123 == ulid_timestamp(msg_id)


def test_ids_stay_increasing_when_the_clock_steps_back() -> None:
    times = iter([1000, 1000, 999, 500, 1001, 1001])
    generator = UlidGenerator(clock=lambda: next(times))
    ids = [generator.mint() for _ in range(6)]
    assert [i for i, _ in ids] == sorted({i for i, _ in ids})
    assert [ts for _, ts in ids] == [1000, 1000, 1000, 1000, 1001, 1001]


def test_entropy_overflow_moves_to_the_next_millisecond() -> None:
    generator = UlidGenerator(clock=lambda: 42)
    generator.mint()
    generator._last_random = (1 << 80) - 1
    following, ts = generator.mint()
    assert ts == 43 and following == encode_ulid(43, 0)


def test_floor_sorts_before_every_id_of_its_millisecond() -> None:
    generator = UlidGenerator(clock=lambda: 5000)
    assert ulid_floor(5000) < generator.mint()[0] < ulid_floor(5001)


def test_is_ulid_refuses_lookalikes() -> None:
    assert not is_ulid("8" + "0" * 25)  # above the 48-bit timestamp range
    assert not is_ulid("0" * 25)
    assert not is_ulid("0" * 25 + "U")  # U is not Crockford
    assert not is_ulid(None)


def test_origins_are_short_and_new_each_time() -> None:
    assert len(new_origin()) == 8 and new_origin() != new_origin()
