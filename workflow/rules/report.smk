rule tabulate:
    input:
        evaluations=[LAYOUT.eval_json(m, v) for m in MODELS for v in VARIANTS[m]],
        grids=[LAYOUT.eval_grid(m, v) for m in MODELS for v in VARIANTS[m]],
        coefficients=[LAYOUT.coefficients(m, search_nfe(m)) for m in MODELS],
        histories=[LAYOUT.history(m, search_nfe(m)) for m in MODELS],
    output:
        report_outputs(),
    log:
        LAYOUT.log("tabulate", "report"),
    params:
        cfg=stage_json("tabulate"),
        models=MODELS,
    conda:
        "../../envs/report.yaml"
    threads: 1
    shell:
        "lcsc tabulate --config-json {params.cfg:q} --models {params.models:q} 2>&1 | tee {log:q}"
