"""``medseg listen``: a DICOM node that segments every series it receives and sends the results back."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    """Add the ``listen`` command to ``app``."""

    @app.command("listen")
    def listen(
        out: Path = typer.Option(..., "--output", "-o",
                                 help="The node's folder: received instances, results, node.sqlite, outbox.sqlite."),
        aet: str = typer.Option("MEDSEG", "--aet", help="Our AE title (senders call it; our sends use it)."),
        port: int = typer.Option(11112, "--port", min=1, max=65535, help="TCP port to listen on."),
        bind: str = typer.Option("0.0.0.0", "--bind",
                                 help="Address to listen on: 0.0.0.0 every interface, 127.0.0.1 this machine only."),
        models: list[Path] = typer.Option(None, "--model", "-m",
                                          help="Run folder of `medseg train` or nnU-Net v2 results folder "
                                               "(repeat for an ensemble); loaded once."),
        send_to: list[str] = typer.Option([], "--send-to",
                                          help="Where results go: AET@HOST:PORT (C-STORE) or a DICOMweb base URL "
                                               "(STOW-RS); repeat for several."),
        fmt: str = typer.Option("dicom-seg", "--format",
                                help="dicom-seg, dicom-rtstruct, nifti, nrrd; comma-separated for several. The DICOM "
                                     "ones are sent."),
        allow: list[str] = typer.Option([], "--allow",
                                        help="Calling AE title allowed to send (repeat; default: any)."),
        idle: float = typer.Option(30.0, "--idle", min=0.0,
                                   help="Seconds without an instance after which a series is complete."),
        retry_after: float = typer.Option(30.0, "--retry-after", min=0.0,
                                          help="Failed sends wait this many seconds times the attempt number."),
        max_attempts: int = typer.Option(10, "--max-attempts", min=1, help="Attempts before a send is given up."),
        manifest: Path = typer.Option(None, "--manifest",
                                      help="Manifest naming and coding the labels (default: the run's plans)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
        tta: bool = typer.Option(True, "--tta/--no-tta", help="Mirroring test-time augmentation."),
        folds: str = typer.Option(None, "--folds", "-f",
                                  help="Folds: 0,1 or 0-4 or all (default: every numbered fold, else fold_all)."),
        checkpoint: str = typer.Option("final", "--checkpoint", help="final, best or latest."),
        status: bool = typer.Option(False, "--status",
                                    help="Print the node's series and sends (failures with their errors) as JSON "
                                         "and exit."),
    ) -> None:
        """Receive series by C-STORE, segment each when complete, send the results on; answers C-ECHO.

        Every series goes through node.sqlite and every result through outbox.sqlite: after a restart the node
        resumes where it stopped, nothing received is lost and nothing is sent twice. Stop it with Ctrl-C or SIGTERM.
        Logs name series by SeriesInstanceUID and peers by AE title, never patient data.
        """
        from medseg.errors import InferenceError
        from medseg.pacs.address import check_aet, parse_destination, require_pacs_extra

        if status:
            from medseg.pacs.node import node_report

            typer.echo(json.dumps(node_report(out), indent=2))
            return
        if not models:
            raise InferenceError("--model is required to listen (the run folder of `medseg train`)")
        require_pacs_extra("medseg listen")
        aet = check_aet(aet, "--aet")
        allowed = tuple(check_aet(a, "--allow") for a in allow)
        destinations = tuple(send_to)
        for destination in destinations:
            parse_destination(destination)
        formats = tuple(f.strip() for f in fmt.split(",") if f.strip())
        for item in formats:
            if item not in ("dicom-seg", "dicom-rtstruct", "nifti", "nrrd"):
                raise InferenceError(f"--format must be dicom-seg, dicom-rtstruct, nifti or nrrd, not {item!r}")
        import warnings

        from medseg.cli.predict import load_models, parse_folds
        from medseg.inference import Predictor, run_batch
        from medseg.pacs.node import Listener, NodeConfig
        from medseg.utils.devices import parse_device
        from medseg.utils.files import FolderLock

        # DICOM libraries quote attribute values in their warnings (patient names among them): keep them out of the log
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(pydicom|highdicom|pynetdicom)\b")

        def log(line: str) -> None:
            now = time.time()  # milliseconds: benchmarks/node_benchmark.py times the stages from these lines
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            print(f"{stamp}.{int(now % 1 * 1000):03d} {line}", file=sys.stderr, flush=True)

        with FolderLock(out, "medseg listen"):
            loaded = load_models(models, parse_folds(folds), checkpoint)
            predictor = Predictor(loaded, tta=tta, device=parse_device(device))
            names, label_info = predictor.label_names, {}
            if manifest is not None:
                from medseg.data import load_manifest

                loaded_manifest = load_manifest(manifest)
                names, label_info = loaded_manifest.label_names, dict(loaded_manifest.label_info)
            settings = {
                "checkpoints": [[str(f.checkpoint.resolve()), f.checkpoint.stat().st_mtime_ns] for f in loaded],
                "tta": tta, "labels": names,
                **({"label_info": {str(k): v for k, v in label_info.items()}} if label_info else {}),
            }

            def predict(cases: Any, results: Path) -> Any:
                return run_batch(predictor, cases, results, fmt=list(formats), label_names=names, settings=settings,
                                 progress="plain", stream=sys.stderr, label_info=label_info)

            config = NodeConfig(aet=aet, port=port, bind=bind, allow=allowed, idle_s=idle, formats=formats,
                                send_to=destinations, retry_after_s=retry_after, max_attempts=max_attempts)
            listener = Listener(config, out, predict, log)
            log(f"model loaded: {len(loaded)} fold(s) on {predictor.device}")

            def on_signal(signum: int, _frame: Any) -> None:
                log(f"stopping ({signal.Signals(signum).name})")
                listener.stop()

            previous = signal.signal(signal.SIGTERM, on_signal)
            try:
                listener.start()
                listener.serve()
            except KeyboardInterrupt:
                log("stopping (interrupted)")
            finally:
                signal.signal(signal.SIGTERM, previous)
                listener.stop()
                report = listener.report()
                listener.close()
            log(f"stopped: series {report['series'] or 'none'}, sends {report['sends'] or 'none'}")
