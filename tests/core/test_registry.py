import pytest

from robustlab.core import DuplicateNameError, Registry, UnknownNameError


def test_register_get_and_names():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha", 1)

    @reg.register("Beta_Two", paper="X 2024, Sec. 3")
    def beta():
        return 2

    assert reg.get("alpha") == 1
    assert reg.get("beta-two") is beta and reg.get("BETA_TWO") is beta
    assert reg.names() == ["alpha", "beta-two"]
    assert reg.meta("beta-two") == {"paper": "X 2024, Sec. 3"}
    assert "alpha" in reg and "gamma" not in reg and len(reg) == 2


def test_duplicate_name_is_an_error():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha", 1)
    with pytest.raises(DuplicateNameError, match="widget 'alpha' is already registered"):
        reg.register("Alpha", 2)


def test_unknown_name_lists_known_names():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha", 1)
    reg.register("beta", 2)
    with pytest.raises(UnknownNameError) as e:
        reg.get("gamma")
    assert str(e.value) == "unknown widget 'gamma'; known widgets: alpha, beta"


def test_unknown_name_errors_spell_the_plural() -> None:
    for kind, plural in (("battery", "batteries"), ("attack", "attacks"), ("key", "keys")):
        reg: Registry[int] = Registry(kind)
        reg.register("a", 1)
        with pytest.raises(UnknownNameError, match=f"unknown {kind} 'b'; known {plural}: a$"):
            reg.get("b")
