"""Bad options and bad teachers are refused before step 0, each with the fix."""

import pytest
import torch
from distill_helpers import TEACHER_CLASS, Teacher, save_teacher, student

from lightning_eff import ConfigError
from lightning_eff.plugins.distillation import FeatureDistillation, KnowledgeDistillation
from lightning_eff.testing import preflight_problems


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"temperature": 0.0}, "temperature=0.0: Input should be greater than 0"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"temperature": float("inf")}, "finite number"),
        ({"alpha": float("nan")}, "finite number"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"start": 0.5, "end": 0.2}, "must be before end"),
        ({"decay": "cubic"}, "decay"),
        ({"teacher_precision": "fp8"}, "teacher_precision"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        KnowledgeDistillation(teacher=TEACHER_CLASS, **options)


def test_a_misspelt_recipe_option_is_named():
    with pytest.raises(ConfigError, match="unknown option 'temprature'"):
        KnowledgeDistillation.from_options(teacher=TEACHER_CLASS, temprature=2.0)


def test_feature_distillation_needs_layer_patterns():
    with pytest.raises(ConfigError, match="student_layers"):
        FeatureDistillation(student_layers=[], teacher_layers=["blocks.*"], teacher=TEACHER_CLASS)


def kd_problems(**options):
    return preflight_problems([KnowledgeDistillation(**options)], module=student())


def test_no_teacher_is_a_problem_naming_the_fix():
    assert kd_problems() == [
        "knowledge_distillation has no teacher: pass teacher= (a weights file with teacher_class, a directory, "
        "'pkg.mod:Class' or a module)"
    ]


def test_missing_teacher_file_is_refused(tmp_path):
    (problem,) = kd_problems(teacher=str(tmp_path / "nope.pt"), teacher_class=TEACHER_CLASS)
    assert "cannot load its teacher" in problem and "no such weights file" in problem


def test_weights_file_without_teacher_class_asks_for_it(tmp_path):
    (problem,) = kd_problems(teacher=save_teacher(tmp_path))
    assert "teacher_class='pkg.mod:Class'" in problem


@pytest.mark.parametrize("class_path", ["tempfile:mkdtemp", "collections:OrderedDict"])
def test_class_of_the_wrong_kind_is_refused_uncalled(class_path, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: pytest.fail("a function named by a recipe was called"))
    (problem,) = kd_problems(teacher=class_path)
    assert "not a torch.nn.modules.module.Module subclass" in problem


def test_pickled_teacher_file_is_refused(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(Teacher(), path)  # a pickled module, not a state dict
    (problem,) = kd_problems(teacher=str(path), teacher_class=TEACHER_CLASS)
    assert "pickled Python objects" in problem and "teacher_class=" in problem


def test_weights_that_do_not_fit_the_teacher_class_name_the_fix(tmp_path):
    (problem,) = kd_problems(teacher=save_teacher(tmp_path, hidden=8), teacher_class=TEACHER_CLASS)
    assert "does not fit Teacher" in problem and "teacher_hparams" in problem


def test_teacher_with_other_classes_than_the_student_is_found_on_a_probe_batch():
    (problem,) = kd_problems(teacher=Teacher(classes=5))
    assert problem.startswith("knowledge_distillation: the teacher's logits (2, 5) do not match the student's (2, 4)")


def test_teacher_with_non_finite_weights_is_refused():
    teacher = Teacher()
    with torch.no_grad():
        teacher.head.bias[0] = float("nan")
    (problem,) = kd_problems(teacher=teacher)
    assert "not finite" in problem


def test_unknown_student_module_is_refused():
    (problem,) = kd_problems(teacher=Teacher(), student_module="encoder")
    assert "student_module='encoder'" in problem and "blocks" in problem


def test_window_ending_after_the_run_is_refused():
    (problem,) = preflight_problems([KnowledgeDistillation(teacher=Teacher(), start=2, end=1000)], module=student(), max_steps=10)
    assert problem == (
        "knowledge_distillation: end=1000 (step 1000) is after the run's last step 10: distillation would "
        "never stop as planned; end earlier (e.g. a fraction such as 0.3) or train longer"
    )


def test_feature_patterns_that_pair_unequally_are_refused():
    technique = FeatureDistillation(student_layers=["blocks.*.0"], teacher_layers=["blocks.0", "blocks.1", "head"], teacher=Teacher())
    (problem,) = preflight_problems([technique], module=student())
    assert "matched 2 modules but teacher_layers" in problem and "matched 3" in problem


def test_feature_patterns_matching_nothing_in_the_teacher_are_refused():
    technique = FeatureDistillation(student_layers=["blocks.0"], teacher_layers=["encoder.*"], teacher=Teacher())
    (problem,) = preflight_problems([technique], module=student())
    assert "teacher_layers=['encoder.*'] match no module of the teacher" in problem
