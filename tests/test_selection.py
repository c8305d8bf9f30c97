import pytest

from promptcache_cli.pml.schema import ModuleImport, parse_prompt, parse_schema
from promptcache_cli.pml.selection import Selection, SelectionError, default_selection, module_paths, param_value, select_cli, select_imports

# The travel example from pml.md, with the src module inlined.
TRAVEL = parse_schema("""\
<schema name="travel">
  <system>You are a travel planner.</system>
  <user>
  <module name="trip-plan">
    I'm planning a trip lasting <parameter name="duration" length="5"/>.
    <union scaffold="domestic">
      <module name="domestic">Stay in the city of <parameter name="city" length="10"/>.</module>
      <module name="overseas">
        <union>
          <module name="maldives">Beaches ...</module>
          <module name="tokyo">Temples <parameter name="city" length="4"/></module>
        </union>
      </module>
    </union>
  </module>
  <module name="manual">The manual.</module>
  </user>
</schema>
""")

# No roles; a top-level union; a plain nested module; a name used in two scopes.
MIXED = parse_schema("""\
<schema name="mixed">
  Intro.
  <module name="a">
    <parameter name="p" length="3"/>
    <module name="b">B <parameter name="q" length="2"/></module>
    <module name="shared">S1</module>
  </module>
  <union>
    <module name="x">X <parameter name="p" length="2"/></module>
    <module name="y"><module name="shared">S2</module></module>
  </union>
  <union scaffold="v"><module name="v">V</module><module name="w">W</module></union>
</schema>
""")

TRIP, DOMESTIC, OVERSEAS = ("trip-plan",), ("trip-plan", "domestic"), ("trip-plan", "overseas")
TOKYO, MALDIVES, MANUAL = OVERSEAS + ("tokyo",), OVERSEAS + ("maldives",), ("manual",)


def imports_of(body: str) -> tuple[ModuleImport, ...]:
    return parse_prompt(f'<prompt schema="travel">{body}</prompt>').imports


def import_error(schema, body: str) -> SelectionError:
    with pytest.raises(SelectionError) as info:
        select_imports(schema, imports_of(body))
    return info.value


def cli_error(schema, modules=(), params=()) -> SelectionError:
    with pytest.raises(SelectionError) as info:
        select_cli(schema, modules=modules, params=params)
    return info.value


# --- module_paths / default_selection --------------------------------------------------------


def test_module_paths_document_order():
    assert module_paths(TRAVEL) == [TRIP, DOMESTIC, OVERSEAS, MALDIVES, TOKYO, MANUAL]
    assert module_paths(MIXED) == [("a",), ("a", "b"), ("a", "shared"), ("x",), ("y",),
                                   ("y", "shared"), ("v",), ("w",)]


def test_default_selection_travel():
    assert default_selection(TRAVEL) == Selection(frozenset({TRIP, DOMESTIC, MANUAL}), ())


def test_default_selection_skips_unions_without_scaffold():
    assert default_selection(MIXED).modules == {("a",), ("a", "b"), ("a", "shared"), ("v",)}


def test_default_selection_scaffold_member_brings_its_defaults():
    schema = parse_schema('<schema name="s"><union scaffold="o"><module name="o">'
                          '<module name="in">i</module><union scaffold="z"><module name="z">z'
                          '</module><module name="t">t</module></union></module>'
                          '<module name="p">p</module></union></schema>')
    assert default_selection(schema).modules == {("o",), ("o", "in"), ("o", "z")}


# --- select_imports --------------------------------------------------------------------------


def test_pml_md_prompt():
    selection = select_imports(TRAVEL, imports_of(
        '<trip-plan duration="3 days"><domestic city="Rome"/></trip-plan>'))
    assert selection.modules == {TRIP, DOMESTIC}
    assert selection.params == ((TRIP, "duration", "3 days"), (DOMESTIC, "city", "Rome"))


def test_only_imported_top_level_modules():
    assert select_imports(TRAVEL, imports_of("<manual/>")).modules == {MANUAL}
    assert select_imports(TRAVEL, ()).modules == frozenset()


def test_import_without_children_gets_default_contents():
    assert select_imports(TRAVEL, imports_of("<trip-plan/><manual/>")).modules == {
        TRIP, DOMESTIC, MANUAL}


def test_union_member_replaces_scaffold_recursively():
    selection = select_imports(TRAVEL, imports_of(
        '<trip-plan><overseas><tokyo city="Kyo"/></overseas></trip-plan>'))
    assert selection.modules == {TRIP, OVERSEAS, TOKYO}
    assert selection.params == ((TOKYO, "city", "Kyo"),)


def test_union_member_without_pick_inside_gets_nothing_from_scaffoldless_union():
    assert select_imports(TRAVEL, imports_of("<trip-plan><overseas/></trip-plan>")).modules == {
        TRIP, OVERSEAS}


def test_child_import_of_plain_module_restates_it_and_applies_params():
    selection = select_imports(MIXED, imports_of('<a p="1"><b q="2"/></a>'))
    assert selection.modules == {("a",), ("a", "b"), ("a", "shared")}
    assert selection.params == ((("a",), "p", "1"), (("a", "b"), "q", "2"))


def test_top_level_union_members_are_top_level_modules():
    selection = select_imports(MIXED, imports_of('<y/><w/>'))
    assert selection.modules == {("y",), ("y", "shared"), ("w",)}


def test_two_members_of_one_union():
    e = import_error(TRAVEL, "<trip-plan>\n<domestic/>\n<overseas/></trip-plan>")
    assert e.message == ("modules 'domestic' and 'overseas' are members of the same union; "
                         "pick one")
    assert e.line == 3 and str(e).startswith("line 3: ")
    assert "same union" in import_error(MIXED, "<x/><y/>").message


@pytest.mark.parametrize("body, name", [("<manual/><manual/>", "'manual'"),
                                        ("<a><b/><b/></a>", "'a/b'")])
def test_import_twice(body, name):
    schema = MIXED if body.startswith("<a>") else TRAVEL
    assert import_error(schema, body).message == f"module {name} is imported twice"


def test_unknown_top_level_module():
    e = import_error(TRAVEL, "\n<foo/>")
    assert str(e) == ("line 2: unknown module 'foo' in schema 'travel' "
                      "(known: trip-plan, manual)")


def test_unknown_nested_module_lists_that_level():
    e = import_error(TRAVEL, "<trip-plan><tokyo/></trip-plan>")
    assert e.message == "unknown module 'tokyo' in module 'trip-plan' (known: domestic, overseas)"
    e = import_error(TRAVEL, "<manual><x/></manual>")
    assert e.message == "unknown module 'x' in module 'manual' (known: none)"


def test_unknown_parameter():
    e = import_error(TRAVEL, '<trip-plan city="Rome"/>')
    assert e.message == "module 'trip-plan' has no parameter 'city' (known: duration)"


def test_select_imports_accepts_plain_module_imports():
    selection = select_imports(TRAVEL, [ModuleImport("manual", (), (), 0)])
    assert selection.modules == {MANUAL}


# --- select_cli ------------------------------------------------------------------------------


def test_cli_empty_is_default():
    assert select_cli(TRAVEL, modules=[], params=[]) == default_selection(TRAVEL)


def test_cli_params_on_default_selection():
    selection = select_cli(TRAVEL, modules=[], params=["duration=2 weeks", "city=Oslo"])
    assert selection.params == ((TRIP, "duration", "2 weeks"), (DOMESTIC, "city", "Oslo"))


def test_cli_paths_include_ancestors_and_replace_scaffold():
    selection = select_cli(TRAVEL, modules=["trip-plan/overseas/tokyo"], params=[])
    assert selection.modules == {TRIP, OVERSEAS, TOKYO}


def test_cli_bare_nested_name_unique():
    assert select_cli(TRAVEL, modules=["maldives"], params=[]).modules == {
        TRIP, OVERSEAS, MALDIVES}


def test_cli_multiple_modules_merge():
    selection = select_cli(TRAVEL, modules=["manual", "trip-plan", "trip-plan/domestic"],
                           params=[])
    assert selection.modules == {TRIP, DOMESTIC, MANUAL}


def test_cli_bare_name_ambiguous_and_unknown():
    e = cli_error(MIXED, modules=["shared"])
    assert e.message == ("module name 'shared' is ambiguous in schema 'mixed' "
                         "(matches: a/shared, y/shared); give its path")
    e = cli_error(TRAVEL, modules=["nowhere"])
    assert e.message == "unknown module 'nowhere' in schema 'travel' (known: trip-plan, manual)"
    e = cli_error(TRAVEL, modules=["trip-plan/overseas/paris"])
    assert e.message == ("unknown module 'paris' in module 'trip-plan/overseas' "
                         "(known: maldives, tokyo)")
    e = cli_error(TRAVEL, modules=["trip-plan/overseas/tokio"])  # a typo in a path: its siblings
    assert e.message.endswith("(known: maldives, tokyo); did you mean 'trip-plan/overseas/tokyo'?")
    assert select_cli(MIXED, modules=["y/shared"], params=[]).modules == {("y",), ("y", "shared")}


def test_cli_top_level_name_wins_over_nested():
    schema = parse_schema('<schema name="s"><module name="a">A</module>'
                          '<module name="b"><module name="a">BA</module></module></schema>')
    assert select_cli(schema, modules=["a"], params=[]).modules == {("a",)}


@pytest.mark.parametrize("spec", ["", "a//b", "/a", "a/"])
def test_cli_invalid_module_path(spec):
    assert "invalid module path" in cli_error(MIXED, modules=[spec]).message


def test_cli_two_members_of_union():
    assert "same union" in cli_error(TRAVEL, modules=["tokyo", "maldives"]).message


def test_cli_qualified_and_unqualified_params():
    selection = select_cli(TRAVEL, modules=["tokyo"],
                           params=["trip-plan/overseas/tokyo/city=Kyoto", "duration=a=b/c"])
    assert selection.params == ((TRIP, "duration", "a=b/c"), (TOKYO, "city", "Kyoto"))
    selection = select_cli(TRAVEL, modules=["tokyo"], params=["tokyo/city="])
    assert param_value(selection, TOKYO, "city") == ""


def test_cli_ambiguous_param():
    e = cli_error(MIXED, modules=["a", "x"], params=["p=1"])
    assert e.message == "parameter 'p' is ambiguous, qualify it as module/param (a, x)"
    selection = select_cli(MIXED, modules=["a", "x"], params=["x/p=1", "a/p=2"])
    assert selection.params == ((("a",), "p", "2"), (("x",), "p", "1"))


def test_cli_param_errors():
    assert cli_error(TRAVEL, params=["city"]).message.startswith("invalid parameter 'city'")
    assert "invalid parameter" in cli_error(TRAVEL, params=["=x"]).message
    assert "invalid parameter" in cli_error(TRAVEL, params=["manual/=x"]).message
    assert cli_error(TRAVEL, params=["nope=1"]).message == (
        "unknown parameter 'nope': no selected module has it")
    assert cli_error(TRAVEL, params=["manual/city=1"]).message == (
        "module 'manual' has no parameter 'city' (known: none)")
    assert cli_error(TRAVEL, modules=["manual"], params=["trip-plan/duration=1"]).message == (
        "module 'trip-plan' of parameter 'trip-plan/duration' is not selected")
    assert cli_error(TRAVEL, params=["tokyo/city=1"]).message == (
        "module 'trip-plan/overseas/tokyo' of parameter 'tokyo/city' is not selected")
    assert cli_error(TRAVEL, params=["duration=1", "trip-plan/duration=2"]).message == (
        "parameter 'trip-plan/duration' is given twice")
    assert "unknown module 'zz'" in cli_error(TRAVEL, params=["zz/city=1"]).message


def test_cli_errors_have_no_line():
    e = cli_error(TRAVEL, modules=["nowhere"])
    assert e.line is None and str(e) == e.message


# --- param_value / Selection -----------------------------------------------------------------


def test_param_value():
    selection = select_imports(TRAVEL, imports_of('<trip-plan duration="3 days"/>'))
    assert param_value(selection, TRIP, "duration") == "3 days"
    assert param_value(selection, ["trip-plan"], "duration") == "3 days"
    assert param_value(selection, DOMESTIC, "city") is None
    assert param_value(selection, TRIP, "nope") is None


def test_selection_is_frozen_and_hashable():
    selection = default_selection(TRAVEL)
    assert isinstance(selection.modules, frozenset) and isinstance(selection.params, tuple)
    with pytest.raises(AttributeError):
        selection.modules = frozenset()
    assert hash(selection) == hash(default_selection(TRAVEL))
