"""Suites: TOML grid files, their expansion into run specs, filters and up-front validation.

A suite is a TOML file (``bench/suites/<name>.toml``, or any path) describing a grid::

    description = "what it is for (shown by `list suites`)"
    datasets = ["digits"]                 # names, or tables {name = "...", params = {...}}
    models = ["cnn_tiny"]
    attacks = ["badnet", {name = "blend", params = {alpha = 0.1}}, "*", "!clean"]
    defenses = ["*"]                      # every registered defense
    ratios = [0.0, 0.05]                  # poison ratios; 0 = a clean cell of that attack
    seeds = [0, 1]
    target = 1                            # the attack target (put into every attack's params)
    preset = "meca"                       # a named parameter set, used by every plug-in having it
    reserve_fraction = 0.05               # clean reserve handed to defenses that declare one

    [budget]                              # how much compute the suite affords
    epochs = 2                            # epochs of the standard (backdoor) training
    scale = 0.05                          # multiplies every paper epoch count of the defenses
    min_steps = 50                        # floor: no training phase of a defense takes fewer steps
    n_train = 10000                       # seeded, class-balanced subsets (omit for all)
    n_test = 2000

    [train]                               # other TrainConfig fields of the standard recipe
    batch_size = 128                      # (an epochs here must equal [budget] epochs)

    [[exclude]]                           # combinations to leave out (any axis keys)
    attack = "sig"
    ratio = 0.15

    [[grid]]                              # optional: several blocks, each overriding the top level
    defenses = ["none", "meca"]

Axis entries are names, wildcards expanded through the registries (``"*"``, ``"fine*"``; plug-ins
whose name starts with ``_`` are only matched by patterns that start with ``_``), ``"!pattern"`` to
drop what earlier entries matched, or tables ``{name, params}``. Parameters of a wildcard table apply
to every match. ``preset`` is chosen once per suite and applies to every attack and defense whose
plug-in defines a preset of that name (``Entry.make_params``); an entry's own ``params.preset``
wins. ``target`` goes into the params of every attack that has a ``target`` field. A
``module:Object`` name imports its module (name only modules you trust); the registry refuses an
object that is not of its kind before anything calls it.

The package has one module per step:

* :mod:`bench.suite.parse`: :func:`load_suite` / :func:`suite_from_dict` read a file and check its
  structure (:class:`Suite`, :class:`SuiteError`, :func:`list_suites`, :func:`suite_path`);
* :mod:`bench.suite.expand`: :func:`expand` turns a :class:`Suite` into
  :class:`~bench.spec.RunSpec` objects (datasets x models x attacks x ratios x seeds x defenses,
  minus exclusions) and :func:`apply_filters` narrows them with the command line's
  ``--attacks/--defenses/--datasets/--models/--ratios/--seeds``;
* :mod:`bench.suite.validate`: :func:`validate` checks the whole expanded grid before the first job
  starts (names, parameters, ratios, data present, each attack's and defense's own checks on each
  cell), returns *every* problem at once, and writes nothing.
"""
from bench.suite.expand import apply_filters, expand
from bench.suite.parse import AXES, SUITES_DIR, Suite, SuiteError, list_suites, load_suite, suite_from_dict, suite_path
from bench.suite.validate import validate

__all__ = ["AXES", "SUITES_DIR", "Suite", "SuiteError", "apply_filters", "expand", "list_suites", "load_suite",
           "suite_from_dict", "suite_path", "validate"]
