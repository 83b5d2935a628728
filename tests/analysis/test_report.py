"""write_report: the HTML holds every section with inline PNG figures, the markdown form
links PNGs written beside it, the numbers come from the graphs given, and a failure
leaves no partial file (nor disturbs an existing report)."""

import base64
import re

import pytest
import torch
from torch import nn

import qcompiler as qc
from qcompiler.analysis.report_render import write_atomically
from qcompiler.errors import QuantizationError
from qcompiler.examples.models import randomize_batchnorm
from qcompiler.quantization.sensitivity import sensitivity_analysis
from qcompiler.report import report_for_model, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("Summary", "Cross-layer equalization: per-channel weight ranges", "Activation ranges",
            "Per-layer sensitivity", "Fidelity")


def relu_cnn():
    """conv-BN-ReLU twice then a classifier: a chain that equalize_cross_layer rescales."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad():  # uneven channel ranges, as trained networks have
        model[0].weight.mul_(torch.logspace(-1, 1, 8).view(8, 1, 1, 1))
    return randomize_batchnorm(model).eval()


def data(count, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 8, 8, generator=generator) for _ in range(count)]


@pytest.fixture(scope="module")
def graphs():
    calibration = data(2, seed=0)
    float_graph = qc.trace(relu_cnn(), (calibration[0],))
    quantized = qc.quantize(float_graph, calibration, progress=False)
    return float_graph, quantized, calibration


FIDELITY = {"int8": {"top1_agreement": 0.98, "mean_kl": 0.0012}, "w4a8": {"top1_agreement": 0.75}}


def test_html_has_every_section_and_inline_png_figures(graphs, tmp_path):
    float_graph, quantized, calibration = graphs
    path = write_report(tmp_path / "report.html", float_graph, quantized, calibration, FIDELITY,
                        progress=False)
    text = path.read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 3  # CLE ranges, activation ranges, sensitivity
    assert all(base64.b64decode(image).startswith(PNG_MAGIC) for image in images)
    assert "<td>w4a8</td><td class=\"n\">0.75</td><td></td>" in text  # a missing metric stays empty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary files left


def test_tables_carry_the_graphs_numbers(graphs, tmp_path):
    float_graph, quantized, calibration = graphs
    text = write_report(tmp_path / "report.html", float_graph, quantized, calibration,
                        progress=False).read_text()
    for fq in (n for n in quantized if n.op == "fake_quant" and not n.inputs[0].is_constant):
        qparams = fq.output.qparams
        cells = f'<td>{fq.name}</td><td class="n">8</td><td class="n">{float(qparams.scale[0]):.4g}</td>'
        assert cells in text
    # both convs are equalized (the chain conv -> relu -> conv), and the table names them
    convs = [n.name for n in quantized if n.op == "conv2d"]
    cle_table = text.split("<h2>Activation ranges</h2>")[0]
    assert all(re.search(rf"<td[^>]*>{name}</td><td>conv2d</td>", cle_table) for name in convs)
    assert "<h2>Fidelity</h2>" not in text


def test_a_given_sensitivity_report_is_used_and_false_leaves_it_out(graphs, tmp_path):
    float_graph, quantized, calibration = graphs
    report = sensitivity_analysis(quantized, calibration, mode="one_quantized", progress=False)
    text = write_report(tmp_path / "a.html", float_graph, quantized, calibration, sensitivity=report,
                        progress=False).read_text()
    assert "with only the named layer quantized" in text
    assert re.search(rf'<td class="n">1</td><td[^>]*>{report.rows[0].layer.name}</td>', text)
    text = write_report(tmp_path / "b.html", float_graph, quantized, calibration, sensitivity=False,
                        progress=False).read_text()
    assert "Not computed (sensitivity=False)." in text and text.count("data:image/png") == 2


def test_markdown_links_pngs_written_beside_it(graphs, tmp_path):
    float_graph, quantized, calibration = graphs
    path = write_report(tmp_path / "report.md", float_graph, quantized, calibration, FIDELITY,
                        progress=False)
    text = path.read_text()
    for section in SECTIONS:
        assert f"## {section}\n" in text
    links = re.findall(r"!\[[^\]]*\]\((report_files/figure\d\.png)\)", text)
    assert len(links) == 3
    assert all((tmp_path / link).read_bytes().startswith(PNG_MAGIC) for link in links)
    assert "| w4a8 | 0.75 |  |" in text


def test_a_failing_input_leaves_no_file_and_keeps_an_old_report(graphs, tmp_path):
    float_graph, quantized, calibration = graphs
    path = tmp_path / "report.html"
    with pytest.raises(QuantizationError, match=r"calibration batch 0: input %input expects"):
        write_report(path, float_graph, quantized, [torch.zeros(2, 3)], progress=False)
    assert list(tmp_path.iterdir()) == []
    path.write_text("old report")
    with pytest.raises(QuantizationError, match="takes a mapping .* got int"):
        write_report(path, float_graph, quantized, calibration, fidelity=3, sensitivity=False)
    assert path.read_text() == "old report" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_a_failure_while_writing_removes_the_temporary_files(tmp_path):
    path, folder = tmp_path / "r.md", tmp_path / "r_files"
    folder.mkdir()
    (folder / "figure1.png").write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomically(path, "# new", {"figure1.png": "not bytes"}, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r_files"]
    assert (folder / "figure1.png").read_bytes() == b"old"


def test_refuses_bad_arguments(graphs, tmp_path):
    float_graph, quantized, calibration = graphs
    with pytest.raises(ValueError, match="must end in .html, .htm or .md"):
        write_report(tmp_path / "report.pdf", float_graph, quantized, calibration)
    with pytest.raises(QuantizationError, match="has no fake_quant nodes; pass the quantized graph"):
        write_report(tmp_path / "r.html", float_graph, float_graph, calibration)
    with pytest.raises(QuantizationError, match="calibration_data is empty"):
        write_report(tmp_path / "r.html", float_graph, quantized, [])
    with pytest.raises(QuantizationError, match="takes a SensitivityReport, None or False, got str"):
        write_report(tmp_path / "r.html", float_graph, quantized, calibration, sensitivity="yes")
    assert list(tmp_path.iterdir()) == []


def test_report_for_model_quantizes_and_measures_fidelity(tmp_path):
    model = relu_cnn()
    path = report_for_model(model, (data(1, seed=0)[0],), tmp_path / "cli.html", progress=False)
    text = path.read_text()
    assert "<title>Quantization report: Sequential (int8)</title>" in text
    assert "<td>int8 + CLE + bias correction</td>" in text and "top1_agreement" in text
    with pytest.raises(QuantizationError, match=r"photos= needs a model taking one \[N, 3, S, S\]"):
        report_for_model(model, (torch.zeros(4, 3, 8, 6),), tmp_path / "x.html", photos=8)
