// dreamcore: after "Use in txt2img" selected the new checkpoint on the server, bring the page along:
// show the txt2img tab, put the prompt in, and show the selected checkpoint in the WebUI's dropdown.
function dreamcoreUseInTxt2img(prompt, title) {
    if (!prompt) {
        return [];
    }
    const app = typeof gradioApp === "function" ? gradioApp() : document;
    const promptBox = app.querySelector("#txt2img_prompt textarea");
    if (promptBox) {
        promptBox.value = prompt;
        if (typeof updateInput === "function") {
            updateInput(promptBox);
        }
    }
    // A1111's and Forge's refresh buttons reread the checkpoint list that now holds the new model.
    const refresh = app.querySelector("#refresh_sd_model_checkpoint") || app.querySelector("#forge_refresh_checkpoint");
    if (refresh) {
        refresh.click();
    }
    if (title && typeof selectCheckpoint === "function") {
        setTimeout(() => selectCheckpoint(title), 500);
    }
    if (typeof switch_to_txt2img === "function") {
        switch_to_txt2img();
    }
    return [];
}
