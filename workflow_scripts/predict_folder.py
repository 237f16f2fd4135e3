#!/usr/bin/env python3
"""Classify a folder of new images with a trained model.

Example:
  python workflow_scripts/predict_folder.py --model-dir results/models/benign_vs_malignant/resnet_v1_50/fold0 \\
      --images /data/new_slides --out predictions.csv --threads 0 [--patients-csv patients.csv --out-patients per_patient.csv]

Writes one row per image file (path relative to --images, width, height, prob_<class> columns,
predicted class, warning for images far smaller than the network's input, blank images and file
names that are not UTF-8, and reason/detail for a file that cannot be read, which gets no
probabilities); with a CSV mapping images to patients
(columns path,patient), also one row per patient (mean probabilities of its predicted images).
"""

from deepbc.jobs import cli, gpu


def arguments(p):
    p.add_argument("--model-dir", required=True, help="a trained model folder (holds settings.json, model.ckpt.*), or its SavedModel export (results/export/...)")
    p.add_argument("--images", required=True, help="folder of PNG/JPEG/TIFF images (searched recursively)")
    p.add_argument("--out", required=True, help="per-image CSV")
    p.add_argument("--patients-csv", default=None, help="optional CSV with columns path,patient")
    p.add_argument("--out-patients", default=None, help="per-patient CSV (needs --patients-csv)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=cli.job_cpus, required=True,
                   help="threads (0: every CPU given; capped at the job's CPUs and SLURM's allocation)")
    gpu.add_arguments(p)


def run(args):
    with gpu.lease_from_args(args):
        from deepbc.evaluation import predict

        predict.predict_folder(args.model_dir, args.images, args.out, args.patients_csv, args.out_patients,
                                args.batch_size, args.threads)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
