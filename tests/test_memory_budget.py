"""The memory budget's books, in-process: what fits on the host and on each GPU."""
from fastserve.servables.memory import Footprint, MemoryBudget, disk_bytes


def test_a_load_fits_while_the_host_and_every_gpu_have_room():
    budget = MemoryBudget(budget_mb=100, gpu_budget_mb=50)
    budget.loaded("a", 1, Footprint(60 * 2**20, {0: 40 * 2**20}))
    assert budget.in_use == 60 * 2**20 and budget.gpu_in_use(0) == 40 * 2**20
    assert budget.fits(Footprint(40 * 2**20, {1: 50 * 2**20}))  # another GPU
    assert not budget.fits(Footprint(41 * 2**20, {}))
    assert not budget.fits(Footprint(1, {0: 11 * 2**20}))
    assert budget.unloaded("a", 1) == 60 * 2**20
    assert budget.in_use == 0 and budget.fits(Footprint(100 * 2**20, {0: 50 * 2**20}))


def test_no_budget_fits_anything():
    assert MemoryBudget(0).fits(Footprint(2**40, {0: 2**40}))


def test_a_version_is_expected_to_need_what_it_took_last_time_else_its_size_on_disk(tmp_path):
    (tmp_path / "variables").mkdir()
    (tmp_path / "variables" / "data").write_bytes(b"x" * 5000)
    (tmp_path / "saved_model.pb").write_bytes(b"y" * 1000)
    budget = MemoryBudget(budget_mb=1)
    assert disk_bytes(str(tmp_path)) == 6000
    assert budget.expected("m", 1, str(tmp_path)) == Footprint(6000, {})
    budget.loaded("m", 1, Footprint(9000, {0: 7}))
    budget.unloaded("m", 1)
    assert budget.expected("m", 1, str(tmp_path)) == Footprint(9000, {0: 7})
