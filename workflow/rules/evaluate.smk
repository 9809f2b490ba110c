rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        result=LAYOUT.eval_json("{model}", "{variant}"),
        grid=LAYOUT.eval_grid("{model}", "{variant}"),
    log:
        LAYOUT.log("evaluate", "{model}-{variant}"),
    params:
        cfg=model_json("evaluate"),
        sources=variant_args,
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        gpu=GPUS,
    shell:
        "lcsc evaluate --config-json {params.cfg:q} --threads {threads}"
        " --wildcards model={wildcards.model},variant={wildcards.variant}"
        " --model {wildcards.model} --variant {wildcards.variant} --manifest {input.manifest}"
        " --features {input.features} --stats {input.stats} {params.sources}"
        " --out {output.result} --grid {output.grid} 2>&1 | tee {log}"
