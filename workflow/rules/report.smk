rule tabulate:
    input:
        unpack(tabulate_inputs),
    output:
        report_outputs(),
    log:
        LAYOUT.log("tabulate", "report"),
    conda:
        "../../envs/report.yaml"
    threads: 1
    params:
        cfg=stage_json("tabulate"),
        models=MODELS,
        out_dir=LAYOUT.report_dir(),
    shell:
        "lcsc tabulate --config-json {params.cfg:q} --models {params.models:q} --manifests {input.manifests:q}"
        " --searches {input.searches:q} --histories {input.histories:q} --evaluations {input.evaluations:q}"
        " --grids {input.grids:q} --real {input.real:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
