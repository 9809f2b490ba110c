rule tabulate:
    input:
        evaluations=expand(LAYOUT.eval_json("{model}", "{variant}"), model=MODELS, variant=VARIANTS),
        grids=expand(LAYOUT.eval_grid("{model}", "{variant}"), model=MODELS, variant=VARIANTS),
        coefficients=expand(LAYOUT.coefficients("{model}", SEARCH_NFE), model=MODELS),
        histories=expand(LAYOUT.history("{model}", SEARCH_NFE), model=MODELS),
    output:
        report_outputs(),
    log:
        LAYOUT.log("tabulate", "report"),
    params:
        cfg=stage_json("tabulate"),
        models=MODELS,
        variants=VARIANTS,
    conda:
        "../../envs/report.yaml"
    threads: 1
    shell:
        "lcsc tabulate --config-json {params.cfg:q} --models {params.models}"
        " --variants {params.variants} 2>&1 | tee {log}"
