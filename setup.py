"""Only what setup.cfg cannot say: the package list (every subpackage found, plus ``tasks/``
installed as ``lm_eval_streaming.tasks``), and ship lm_eval_streaming.pth at the site-packages
root (regular and editable wheels), the start-up hook lm-eval 0.4.13 needs for plugins."""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "lm_eval_streaming.pth"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        self.copy_file(PTH, f"{self.build_lib}/{PTH}", preserve_mode=0)


class EditableWheelWithPth(editable_wheel):
    def _create_wheel_file(self, bdist_wheel):
        from wheel.wheelfile import WheelFile

        path = super()._create_wheel_file(bdist_wheel)
        with WheelFile(path, "a") as whl:
            whl.write(PTH, PTH)
        return path


PACKAGES = find_packages(include=["lm_eval_streaming", "lm_eval_streaming.*"]) + ["lm_eval_streaming.tasks"]

setup(packages=PACKAGES, cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
