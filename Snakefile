# LCSC workflow: train -> reference stats -> coefficient search -> evaluation -> report.
# Run `snakemake --cores all`; config/README.md documents every key.

from snakemake.utils import min_version

min_version("9.0")


# One config, as the CLI builds it: the schema's defaults, overlaid by the --configfile files in
# order, then by --config. Without --configfile, the embedded default config/config.yaml, which the
# workflow profile profiles/default gives Snakemake as its --configfile.


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        report_outputs(),
        export_outputs(),
